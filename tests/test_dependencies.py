"""The pinned development set installs together: the project, transformers (and its hub client),
accelerate, peft and lightning, with torch 2.13.0 and numpy 1.23.5 (MXNet 1.9.1 needs numpy < 1.24)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements-dev.txt"


def pins() -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line of requirements-dev.txt."""
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", REQUIREMENTS.read_text(), flags=re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


def test_the_training_stacks_are_pinned():
    pinned = pins()
    for name in ("torch", "numpy", "click", "transformers", "huggingface-hub", "accelerate", "peft", "lightning"):
        assert name in pinned, name
    assert pinned["torch"] == "2.13.0" and pinned["numpy"] == "1.23.5"


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
