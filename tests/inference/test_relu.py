"""The ReLU after a converted convolution applied in the kernel's epilogue: in eval mode only, only
where the graph allows, and the shared ReLU module still right on its other inputs."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning_tools import pytorch_pruning
from pruning_tools.inference import BankSparseConv, to_bank_sparse
from pruning_tools.inference.relu import FusedReLU

from .conftest import TOL
from .test_fold import EVERY, converted_without, pruned_resnet


def relu_calls(model: nn.Module, x: torch.Tensor, monkeypatch) -> tuple[torch.Tensor, int]:
    """``model(x)`` (no gradient) and how many ReLU passes PyTorch made."""
    count = 0
    relu = F.relu

    def counted(*args, **kwargs):
        nonlocal count
        count += 1
        return relu(*args, **kwargs)

    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(F, "relu", counted)
        return model(x), count


def test_resnet_relus_fused_in_eval_mode(path, monkeypatch):
    model, prune = pruned_resnet()
    reference = copy.deepcopy(model)
    unfused = converted_without(monkeypatch, model, prune, "conv_relu_pairs")
    report = to_bank_sparse(model, prune.state_dict(), **EVERY)
    fused = [m for m in model.modules() if isinstance(m, BankSparseConv) and m.fused_relu]
    assert len(fused) == 8  # conv1 and conv2 of each of the 4 blocks (conv3 feeds the residual add)
    assert "ReLU applied in the epilogue of the converted convolution before it in eval mode: 8" in report.notes
    assert all(isinstance(block.relu, FusedReLU) for block in model.modules() if hasattr(block, "conv3"))
    x = torch.randn(2, 3, 32, 32)
    expected, dense_passes = relu_calls(reference, x, monkeypatch)
    out, passes = relu_calls(model, x, monkeypatch)
    torch.testing.assert_close(out, expected, **TOL)
    assert dense_passes == 13  # the stem, then 3 per block (the third after the residual add)
    assert passes == (13 - 8 if path == "native" else 13)  # the PyTorch fallback applies nothing itself
    assert list(model.state_dict()) == list(unfused.state_dict())
    model.train()
    unfused.train()
    with torch.no_grad():  # training mode: batch statistics, then the ReLU, as without fusing
        torch.testing.assert_close(model(x), unfused(x), **TOL)


class ConvReLU(nn.Module):
    def __init__(self, output_used_twice: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(64, 64, 3, padding=1)
        self.relu = nn.ReLU()
        self.output_used_twice = output_used_twice

    def forward(self, x):
        y = self.conv(x)
        return self.relu(y) + y if self.output_used_twice else self.relu(y)


def converted(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    prune = pytorch_pruning.Prune(model, 0, 0, 1, {"conv.weight": 0.9375})
    prune.prune()
    reference = copy.deepcopy(model).eval()
    to_bank_sparse(model.eval(), prune, **EVERY)
    return model, reference


@pytest.mark.parametrize("twice", [False, True])
def test_fused_only_where_the_output_goes_to_the_relu_alone(path, twice, monkeypatch):
    model, reference = converted(ConvReLU(output_used_twice=twice))
    assert model.conv.fused_relu is not twice and isinstance(model.relu, FusedReLU) is not twice
    x = torch.randn(2, 64, 6, 6)
    expected, _ = relu_calls(reference, x, monkeypatch)
    out, passes = relu_calls(model, x, monkeypatch)
    torch.testing.assert_close(out, expected, **TOL)
    assert passes == (0 if path == "native" and not twice else 1)


def test_epilogue_matches_torch_relu_with_nans(level):
    model, _ = converted(ConvReLU())
    x = torch.randn(2, 64, 6, 6)
    x[0, 3, 2, 2] = float("nan")
    with torch.no_grad():
        y = model.conv(x)  # called alone: after the ReLU (documented)
        model.conv.fused_relu = False
        plain = model.conv(x)
    assert plain.isnan().any() and (plain < 0).any()
    torch.testing.assert_close(y, torch.relu(plain), rtol=0, atol=0, equal_nan=True)


def test_an_output_changed_in_place_is_relued_again(level):
    model, _ = converted(ConvReLU())
    with torch.no_grad():
        y = model.conv(torch.randn(1, 64, 6, 6))
        assert model.conv.relu_applied_to(y)
        y.sub_(1.0)
        assert not model.conv.relu_applied_to(y)
        assert (model.relu(y) >= 0).all() and (y < 0).any()  # nn.ReLU(inplace=False): y itself unchanged


def test_deepcopy_pickle_and_compile_after_a_call(path):
    model, reference = converted(ConvReLU())
    x = torch.randn(1, 64, 6, 6)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, **TOL)  # leaves a mark (a weak reference)
        twin = copy.deepcopy(model)
        assert twin.relu.__dict__["_fused_from"] == (twin.conv,)  # the copy's ReLU knows the copy's conv
        loaded = pickle.loads(pickle.dumps(model))
        for m in (twin, loaded):
            torch.testing.assert_close(m(x), expected, **TOL)
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), expected, **TOL)


def test_inference_mode_computes_the_same_without_fusing(level, monkeypatch):
    """Inference tensors have no version counter: the convolution leaves the ReLU to the module."""
    model, reference = converted(ConvReLU())
    x = torch.randn(1, 64, 6, 6)
    expected, _ = relu_calls(reference, x, monkeypatch)
    with torch.inference_mode():
        out, passes = relu_calls(model, x, monkeypatch)
    assert passes == 1
    torch.testing.assert_close(out, expected, **TOL)
