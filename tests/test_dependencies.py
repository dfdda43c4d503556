"""The pinned development sets install together: the PyTorch stack (the project, transformers and its hub
client, accelerate, peft, lightning) on torch 2.13.0 and numpy 2.x, and MXNet 1.9.1 with numpy < 1.24
in its own environment (requirements-mxnet.txt), so that MXNet holds nothing back."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements-dev.txt"


def pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line of a requirements file."""
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", path.read_text(), flags=re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


def test_the_training_stacks_are_pinned():
    pinned = pins()
    for name in ("torch", "numpy", "click", "transformers", "huggingface-hub", "accelerate", "peft", "lightning"):
        assert name in pinned, name
    assert pinned["torch"] == "2.13.0" and int(pinned["numpy"].split(".")[0]) >= 2 and "mxnet" not in pinned
    mxnet = pins(ROOT / "requirements-mxnet.txt")
    assert mxnet["mxnet"] == "1.9.1" and mxnet["torch"] == "2.13.0" and mxnet["numpy"].startswith("1.23.")


def test_every_pin_satisfies_what_the_pinned_packages_require():
    """What pip would refuse: e.g. huggingface-hub 2.x requires click >= 8.4.2, once pinned to 8.1.8."""
    requirements = pytest.importorskip("packaging.requirements")
    pinned = pins()
    clashes = []
    for dist_name in pinned:
        try:
            requires = metadata.requires(dist_name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = requirements.Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an optional extra, or another platform
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            if name in pinned and not req.specifier.contains(pinned[name], prereleases=True):
                clashes.append(f"{dist_name} requires {req}, pinned {name}=={pinned[name]}")
    assert clashes == []


def test_pip_check_finds_no_broken_requirement():
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
