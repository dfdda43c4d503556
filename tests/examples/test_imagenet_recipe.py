"""examples/imagenet_resnet50.py: two torchrun launches of 2 CPU processes on synthetic images
(an 8-step run, and a run resumed from its step-4 checkpoint that must end bit-identical), plus
in-process checks of the model and the ImageFolder reader."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from .. import launch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "imagenet_resnet50.py"
LAUNCH_TIMEOUT_S = 180
SMOKE = [
    "--synthetic",
    "--image-size",
    "32",
    "--num-classes",
    "10",
    "--base-width",
    "8",
    "--bank-size",
    "16",
    "--synthetic-size",
    "64",
    "--batch-size",
    "4",
    "--epochs",
    "2",
    "--prune-start-epoch",
    "0.25",
    "--prune-epochs",
    "0.5",
    "--frequency",
    "2",
    "--workers",
    "0",
    "--max-steps",
    "8",
    "--save-every",
    "4",
    "--log-every",
    "2",
]


def load_recipe():
    spec = importlib.util.spec_from_file_location("imagenet_resnet50", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = load_recipe()


def torchrun(*args: str) -> str:
    """``examples/imagenet_resnet50.py args`` on 2 processes (``tests.launch.torchrun``)."""
    return launch.torchrun(SCRIPT, *args, timeout_s=LAUNCH_TIMEOUT_S)


def test_two_process_run_and_resume_are_bit_identical(tmp_path):
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    out = torchrun(*SMOKE, "--keep-checkpoints", "--out", str(first))
    assert "2 process(es) on cpu" in out
    assert "sparsity 0.9375, banks balanced True" in out  # bank 16 at 93.75 %: 1 of 16 kept
    out = torchrun(*SMOKE, "--resume", str(first / "step4.pt"), "--out", str(resumed))
    assert "resumed from" in out and "at step 4" in out

    a = torch.load(first / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert a["pruner"]["step"] == 8 and a["pruner"]["masks"]  # masks exist (the ramp ran)
    for name, packed in a["pruner"]["masks"].items():
        assert torch.equal(packed, b["pruner"]["masks"][name]), name
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]


def test_resnet50_v1b_has_torchvision_parameter_count_and_names():
    model = recipe.ResNet50(1000, "v1b")
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision.models.resnet50
    names = set(model.state_dict())
    assert {"conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_var", "fc.bias"} <= names
    prune_dict = recipe.prune_dict_for(model, 0.9375, 64)
    assert "conv1.weight" not in prune_dict  # RGB stem: rows of 3 cannot hold a bank
    assert "fc.weight" in prune_dict and "layer1.0.conv1.weight" in prune_dict
    assert len(prune_dict) == 53 - 1 + 1  # 53 convs without the stem, plus fc


def test_resnet50_v1d_forward_shape():
    model = recipe.ResNet50(7, "v1d", base_width=8).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert isinstance(model.layer2[0].downsample[0], torch.nn.AvgPool2d)


def test_image_folder_reads_classes_in_order(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
        (tmp_path / c).mkdir()
        for i, size in enumerate(((40, 30), (25, 50))):
            Image.new("RGB", size, colour).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    val = recipe.ImageFolder(tmp_path, size=16, train=False)
    assert val.classes == ["cat", "dog"] and len(val) == 4
    x, label = val[2]
    assert x.shape == (3, 16, 16) and label == 1
    expected = (torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1) - recipe.MEAN) / recipe.STD  # pure green
    assert torch.allclose(x, expected.expand(3, 16, 16), atol=1e-5)
    x, label = recipe.ImageFolder(tmp_path, size=16, train=True)[0]
    assert x.shape == (3, 16, 16) and label == 0


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        recipe.parse_args(["--synthetic", "--sparsity", "1.0"])
    assert "--sparsity=1.0 is not allowed" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--data"):
        recipe.ImageFolder(tmp_path / "missing")
