"""`pruning-tools demo` end to end on a small slice of real MNIST."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from pruning_tools.cli import main
from pruning_tools.demo import data as mnist
from pruning_tools.demo.torch_backend import SimpleCNN, default_prune_dict
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
        "pruner_state.safetensors",
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
    prune.load(out / "pruner_state.safetensors")
    assert prune.check()[1]
    result = CliRunner().invoke(
        main, ["inspect", str(out / "weights.safetensors"), "--match", "*.weight", "--require-balanced"]
    )
    assert result.exit_code == 0, result.output


def test_demo_bad_option_and_missing_data(tmp_path, monkeypatch):
    result = CliRunner().invoke(main, ["demo", "--sparsity", "1.5"])
    assert result.exit_code == 2 and "--sparsity" in result.output
    result = CliRunner().invoke(main, ["demo", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "MNIST not found" in result.output and "--data" in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.mxnet
@pytest.mark.skipif(importlib.util.find_spec("mxnet") is None, reason="mxnet not installed")
def test_demo_mxnet_slice(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--framework", "mxnet", *SLICE, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["framework"] == "mxnet" and len(results["epochs"]) == 2
    assert "weights" not in results and "pruner_state" not in results  # results only: files hold the rest
    assert results["settings"]["bank_size"] == 64 and results["layer_sparsity"]["cnn_fc_weight"] == 1 - 6 / 64
    assert (tmp_path / "pruner_state.safetensors").stat().st_size > 0
    assert (tmp_path / "weights.safetensors").stat().st_size > 0


def test_demo_download_flag(tmp_path, monkeypatch):
    fetched = []

    def fake_download(directory):
        fetched.append(directory)
        return mnist.write_idx_dir(directory, _tiny_mnist())

    monkeypatch.setattr(mnist, "download", fake_download)
    args = ["demo", "--data", str(tmp_path / "d"), "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "o")]
    assert CliRunner().invoke(main, args).exit_code == 2  # nothing found, no download asked
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
    assert unknown.exit_code == 2 and "--prune-dict" in unknown.output and "conv9.weight" in unknown.output


def test_demo_ends_with_the_converted_model(demo_run):
    out, output = demo_run
    assert "bank-sparse (conv2, conv3, fc): test accuracy" in " ".join(output.split())
    deployment = json.loads((out / "results.json").read_text())["deployment"]
    assert deployment["converted"] == ["conv2", "conv3", "fc"]
    assert deployment["accuracy"] == deployment["masked_accuracy"]
    assert deployment["speedup"] > 0 and deployment["speedup_one"] > 0
    assert "conv1" in deployment["report"]  # the rule's report: conv1 cannot be banked


def test_one_total_for_one_model(demo_run):
    """The demo's total, ``inspect`` with the README's selection and the README agree: all count the
    four conv / dense weights the demo prunes (``*.weight`` also matches the BatchNorm gains)."""
    import re
    from pathlib import Path

    out, output = demo_run
    results = json.loads((out / "results.json").read_text())
    assert "over conv1.weight, conv2.weight, conv3.weight, fc.weight (376,576 values" in output
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    command = re.search(r"pruning-tools inspect runs/demo/weights\.safetensors (.*?) --require-balanced", readme)
    selection = [glob.strip("'") for glob in command.group(1).split()[1::2]]
    args = [x for glob in selection for x in ("--match", glob)]
    result = CliRunner().invoke(main, ["inspect", str(out / "weights.safetensors"), *args, "--json"])
    totals = json.loads(result.output)["totals"]
    assert totals["tensors"] == 4 and totals["numel"] == 376_576
    assert totals["sparsity"] == pytest.approx(results["total_sparsity"], abs=1e-12)
    everything = CliRunner().invoke(
        main, ["inspect", str(out / "weights.safetensors"), "--match", "*.weight", "--json"]
    )
    assert json.loads(everything.output)["totals"]["tensors"] == 7  # + bn1, bn2, bn3 gains: another total


def test_same_machine_same_numbers_and_the_results_page_says_where_that_ends(tmp_path, tiny_mnist):
    """Results reproduce bit for bit on one machine (same threads); across CPUs they do not, and the
    MNIST results page says so with the spread measured."""
    from pathlib import Path

    runs = []
    for name in ("a", "b"):
        args = ["demo", "--data", str(tiny_mnist), *SLICE, "--epochs", "1", "--out", str(tmp_path / name)]
        assert CliRunner().invoke(main, args).exit_code == 0
        runs.append(load_file(str(tmp_path / name / "weights.safetensors")))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    results = (Path(__file__).resolve().parents[2] / "docs" / "results" / "mnist.md").read_text()
    assert "Reproducible on one machine, not across CPUs" in results and "99.36 %" in results


def test_an_installed_package_finds_what_download_fetched(tmp_path, monkeypatch, mnist_dir):
    """Outside a checkout the demo reads the user cache that --download fills, and says where it looked."""
    import click

    from pruning_tools.cli.demo import mnist_data_dir
    from pruning_tools.demo import data

    monkeypatch.chdir(tmp_path)  # no data/mnist/ here
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(click.UsageError, match=r"cache.*pass --data DIR or --download"):
        mnist_data_dir(None, False)
    monkeypatch.setattr(data, "CACHE_DIR", Path(mnist_dir))
    assert mnist_data_dir(None, False) == Path(mnist_dir)
