"""The demo's one trainer (both frameworks) on slices of real MNIST."""

import importlib.util

import pytest
import torch

from pruning_tools.demo.torch_backend import SimpleCNN, random_shift
from pruning_tools.demo.trainer import train_mnist as _train_mnist

HAVE_MXNET = importlib.util.find_spec("mxnet") is not None


@pytest.fixture
def train_mnist(mnist_dir):
    """``train_mnist`` reading the repository's MNIST."""
    return lambda **kwargs: _train_mnist(mnist_dir, **kwargs)


def test_train_mnist_dense_and_unstructured(train_mnist):
    dense = train_mnist(sparsity=0.0, epochs=1, batch_size=64, limit=128)
    assert dense["pruner_state"] is None and dense["total_sparsity"] == 0.0 and dense["steps"] == []
    none = train_mnist(sparsity=0.75, balance="none", epochs=1, batch_size=64, limit=128)
    assert none["layer_sparsity"]["conv1.weight"] == pytest.approx(0.75, abs=1 / 576)  # per tensor, no banks
    assert none["total_sparsity"] == pytest.approx(0.75, abs=1e-4)


def test_train_mnist_learns_on_a_slice(train_mnist):
    result = train_mnist(sparsity=0.5, epochs=2, batch_size=64, limit=1500)
    assert result["test_accuracy"] > 0.8  # chance is 0.1
    assert [r["epoch"] for r in result["epochs"]] == [1, 2]
    assert result["epochs"][-1]["sparsity"] == pytest.approx(result["total_sparsity"])


def test_train_mnist_is_deterministic_per_seed(train_mnist):
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
def test_train_mnist_bad_arguments(train_mnist, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_mnist(**kwargs)


@pytest.mark.mxnet
@pytest.mark.skipif(not HAVE_MXNET, reason="mxnet not installed")
def test_one_cycle_matches_pytorch_onecycle():
    from pruning_tools.demo.mxnet_backend import one_cycle_lr

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.004)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.004, total_steps=50, pct_start=0.15)
    for step in range(1, 51):
        assert one_cycle_lr(step, 50, 0.004) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        sched.step()


@pytest.mark.mxnet
@pytest.mark.skipif(not HAVE_MXNET, reason="mxnet not installed")
def test_mxnet_small_run_reports_everything(mnist_dir):
    def train_mnist(**kwargs):
        return _train_mnist(mnist_dir, framework="mxnet", **kwargs)

    records = []
    result = train_mnist(limit=384, epochs=2, batch_size=64, on_epoch=records.append)
    assert result["framework"] == "mxnet" and [r["epoch"] for r in records] == [1, 2]
    assert result["epochs"] == records and result["settings"]["epochs"] == 2
    assert set(result["layer_sparsity"]) == {
        "cnn_conv1_weight",
        "cnn_conv2_weight",
        "cnn_conv3_weight",
        "cnn_fc_weight",
    }
    assert result["layer_sparsity"]["cnn_conv2_weight"] == pytest.approx(1 - 6 / 64)  # bank 64 keeps 6
    assert result["balanced"] and result["steps"][-1]["target"] == pytest.approx(result["total_sparsity"], abs=0.01)
    assert result["weights"]["cnn_fc_weight"].shape == (10, 1024)
    assert result["pruner_state"]["step"] == 12 and 0.0 <= result["test_accuracy"] <= 1.0
    assert "cnn_conv1_weight" in result["notes"][0]  # 1 input channel: rows of length 1 stay dense

    dense = train_mnist(limit=128, epochs=1, sparsity=0.0)
    assert dense["pruner_state"] is None and dense["total_sparsity"] == 0.0
    with pytest.raises(ValueError, match="sparsity=1.5"):
        train_mnist(sparsity=1.5)
