"""`pruning-tools demo` end to end on a small slice of real MNIST, and the training function."""

import importlib.util
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from pruning_tools import mnist
from pruning_tools.cli import main
from pruning_tools.mnist_train import SimpleCNN, default_prune_dict, random_shift, train_mnist
from pruning_tools.pytorch_pruning import Prune

SLICE = ["--limit", "256", "--epochs", "2", "--batch-size", "32"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(main, ["demo", *SLICE, "--sparsity", "0.9", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_writes_every_file(demo_run):
    out, output = demo_run
    for name in (
        "weights.safetensors",
        "pruner_state.pt",
        "results.json",
        "sparsity_schedule.png",
        "layer_sparsity.png",
        "bank_histogram.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert "epoch  1/2" in output and "epoch  2/2" in output and "sparsity 0.90" in output


def test_demo_results_json(demo_run):
    results = json.loads((demo_run[0] / "results.json").read_text())
    assert results["framework"] == "pytorch" and results["settings"]["sparsity"] == 0.9
    assert results["settings"]["limit"] == 256 and len(results["epochs"]) == 2
    assert 0.0 <= results["test_accuracy"] <= 1.0 and results["balanced"] is True
    layers = results["layer_sparsity"]
    assert layers["conv2.weight"] == pytest.approx(1 - 6 / 64)  # bank 64 at 90 %: 6 kept of every 64
    assert layers["fc.weight"] == pytest.approx(1 - 6 / 64)
    assert layers["conv1.weight"] == 0.0  # rows of one input channel cannot be banked: reported in notes
    assert any("conv1.weight" in note for note in results["notes"])
    steps = results["steps"]
    assert steps and steps[-1]["target"] == pytest.approx(0.9)
    assert all(s["sparsity"] >= s["target"] - 0.01 or s["target"] < 0.05 for s in steps[1:] if s["target"] > 0)
    assert "weights" not in results and results["files"]["weights"] == "weights.safetensors"


def test_demo_checkpoint_loads_and_is_balanced(demo_run):
    out = demo_run[0]
    model = SimpleCNN()
    model.load_state_dict(load_file(str(out / "weights.safetensors")))  # strict: every key and shape
    settings = json.loads((out / "results.json").read_text())["settings"]
    with pytest.warns(UserWarning, match="conv1.weight"):  # its rows hold one input channel
        prune = Prune(
            model,
            settings["pretrain_step"],
            settings["sparse_step"],
            settings["frequency"],
            default_prune_dict(model, 0.9),
        )
    prune.load_state_dict(torch.load(out / "pruner_state.pt", weights_only=True))
    assert prune.check()[1]
    result = CliRunner().invoke(
        main, ["inspect", str(out / "weights.safetensors"), "--match", "*.weight", "--require-balanced"]
    )
    assert result.exit_code == 0, result.output


def test_train_mnist_dense_and_unstructured():
    dense = train_mnist(sparsity=0.0, epochs=1, batch_size=64, limit=128)
    assert dense["pruner_state"] is None and dense["total_sparsity"] == 0.0 and dense["steps"] == []
    none = train_mnist(sparsity=0.75, balance="none", epochs=1, batch_size=64, limit=128)
    assert none["layer_sparsity"]["conv1.weight"] == pytest.approx(0.75, abs=1 / 576)  # per tensor, no banks
    assert none["total_sparsity"] == pytest.approx(0.75, abs=1e-4)


def test_train_mnist_learns_on_a_slice():
    result = train_mnist(sparsity=0.5, epochs=2, batch_size=64, limit=1500)
    assert result["test_accuracy"] > 0.8  # chance is 0.1
    assert [r["epoch"] for r in result["epochs"]] == [1, 2]
    assert result["epochs"][-1]["sparsity"] == pytest.approx(result["total_sparsity"])


def test_train_mnist_is_deterministic_per_seed():
    runs = [train_mnist(sparsity=0.5, epochs=1, batch_size=64, limit=128, seed=s) for s in (3, 3, 4)]
    assert runs[0]["weights"]["fc.weight"].tolist() == runs[1]["weights"]["fc.weight"].tolist()
    assert runs[0]["weights"]["fc.weight"].tolist() != runs[2]["weights"]["fc.weight"].tolist()


def test_logits_not_softmax():
    out = SimpleCNN().eval()(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10) and not torch.allclose(out.sum(1), torch.ones(4))


def test_random_shift_moves_whole_images():
    x = torch.zeros(3, 1, 28, 28)
    x[:, 0, 10:18, 10:18] = 1.0
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and torch.equal(shifted.sum((1, 2, 3)), x.sum((1, 2, 3)))
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.0}, "sparsity=1.0"),
        ({"balance": "rows"}, "balance='rows'"),
        ({"epochs": 0}, "epochs=0"),
        ({"limit": -1}, "limit=-1"),
        ({"bank_size": 1}, "bank_size=1"),
    ],
)
def test_train_mnist_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_mnist(**kwargs)


def test_demo_bad_option_and_missing_data(tmp_path, monkeypatch):
    result = CliRunner().invoke(main, ["demo", "--sparsity", "1.5"])
    assert result.exit_code == 2 and "--sparsity" in result.output
    monkeypatch.setattr(mnist, "VENDORED_DIR", tmp_path / "a")
    monkeypatch.setattr(mnist, "SHARED_DIR", tmp_path / "b")
    result = CliRunner().invoke(main, ["demo", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "MNIST not found" in result.output


@pytest.mark.skipif(importlib.util.find_spec("mxnet") is None, reason="mxnet not installed")
def test_demo_mxnet_slice(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--framework", "mxnet", *SLICE, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["framework"] == "mxnet" and len(results["epochs"]) == 2
    assert (tmp_path / "weights.safetensors").stat().st_size > 0


def test_pytorch_example_runs_on_a_slice(monkeypatch, capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "pytorch_pruning_mnist.py"
    monkeypatch.setattr(sys, "argv", [str(example), "--limit", "256", "--epochs", "2"])
    with pytest.warns(UserWarning, match="conv1.weight"):
        runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "epoch 2: test accuracy" in out and "sparsity 0.90" in out
    assert "every bank within its budget: True" in out


def test_demo_download_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "VENDORED_DIR", tmp_path / "a")
    monkeypatch.setattr(mnist, "SHARED_DIR", tmp_path / "b")
    fetched = []

    def fake_download(directory):
        fetched.append(directory)
        return mnist.write_idx_dir(directory, _tiny_mnist())

    monkeypatch.setattr(mnist, "download", fake_download)
    args = ["demo", "--data", str(tmp_path / "d"), "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "o")]
    assert CliRunner().invoke(main, args).exit_code == 1  # nothing found, no download asked
    result = CliRunner().invoke(main, [*args, "--download"])
    assert result.exit_code == 0, result.output
    assert fetched == [tmp_path / "d"]
    assert json.loads((tmp_path / "o" / "results.json").read_text())["settings"]["data_dir"] == str(tmp_path / "d")


def _tiny_mnist(n=64):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8).numpy()
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8).numpy()
    return mnist.MnistData(images, labels, images, labels)


def test_demo_prune_dict_option(tmp_path):
    args = [
        "demo",
        *SLICE,
        "--epochs",
        "1",
        "--balance",
        "none",
        "--out",
        str(tmp_path),
        "--prune-dict",
        '{"conv[23].weight": 0.75, "fc.weight": 0.75}',
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    layers = json.loads((tmp_path / "results.json").read_text())["layer_sparsity"]
    assert layers == {"conv2.weight": 0.75, "conv3.weight": pytest.approx(0.75, abs=1e-5), "fc.weight": 0.75}
    bad = CliRunner().invoke(main, ["demo", "--prune-dict", "[0.9]"])
    assert bad.exit_code == 2 and "--prune-dict" in bad.output and "JSON object" in bad.output
    unknown = CliRunner().invoke(
        main, ["demo", *SLICE, "--out", str(tmp_path), "--prune-dict", '{"conv9.weight": 0.5}']
    )
    assert unknown.exit_code == 1 and "conv9.weight" in unknown.output
