"""Max-pooling computed channels-last in a converted model: the same values and layout as
``nn.MaxPool2d``, only where the fast path applies, and every place the model holds the module."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pruning_tools.inference import to_bank_sparse
from pruning_tools.inference.pool import ChannelsLastMaxPool2d, pool_channels_last

from .conftest import TOL
from .test_fold import EVERY, converted_without, pruned_resnet

SETTINGS = [
    dict(kernel_size=3, stride=2, padding=1),  # ResNet's stem
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_same_values_and_layout_as_max_pool(settings):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 13, 11)
    x[0, 1, 2, 3] = float("nan")  # a NaN wins its windows, as in PyTorch's kernel
    x[1, 2, 4:7, 4:7] = float("-inf")
    dense, fast = nn.MaxPool2d(**settings).eval(), ChannelsLastMaxPool2d(**settings).eval()
    with torch.no_grad():
        expected, out = dense(x), fast(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    assert out.is_contiguous() and out.stride() == expected.stride()
    assert torch.isnan(out[0, 1]).any()


def test_other_inputs_pool_as_max_pool():
    fast = ChannelsLastMaxPool2d(3, 2, 1).eval()
    x = torch.randn(1, 4, 9, 9)
    cases = [
        x.contiguous(memory_format=torch.channels_last),  # already channels-last: returned as such
        x.double(),
        x[:, :, ::2],  # not contiguous
        torch.randn(4, 9, 9),  # 3-d
    ]
    for case in cases:
        with torch.no_grad():
            out, expected = fast(case), nn.functional.max_pool2d(case, 3, 2, 1)
        assert torch.equal(out, expected) and out.stride() == expected.stride()
    leaf = x.clone().requires_grad_()
    fast(leaf).sum().backward()  # autograd: nn.MaxPool2d's own path
    assert leaf.grad is not None and leaf.grad.sum() == fast(x).numel()
    indices = ChannelsLastMaxPool2d(3, 2, 1, return_indices=True).eval()
    assert len(indices(x)) == 2


def test_pool_channels_last_replaces_each_module_once_wherever_held():
    shared = nn.MaxPool2d(2)
    model = nn.Sequential(shared, nn.Sequential(shared), nn.MaxPool2d(2, return_indices=True), nn.AvgPool2d(2))
    model.eval()
    assert pool_channels_last(model) == 1
    assert type(model[0]) is ChannelsLastMaxPool2d and model[1][0] is model[0]
    assert not model[0].training and model[0].kernel_size == 2 and model[0].stride == 2
    assert type(model[2]) is nn.MaxPool2d and type(model[3]) is nn.AvgPool2d
    assert pool_channels_last(model) == 0  # already done


def test_converted_resnet_pools_channels_last_with_the_same_outputs(monkeypatch):
    model, prune = pruned_resnet()
    reference = copy.deepcopy(model)
    unpooled = converted_without(monkeypatch, model, prune, "pool_channels_last")
    report = to_bank_sparse(model, prune.state_dict(), **EVERY)
    assert type(model.maxpool) is ChannelsLastMaxPool2d
    assert "MaxPool2d computed channels-last on NCHW inputs in eval mode (same values): 1" in report.notes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), **TOL)
    assert type(unpooled.maxpool) is nn.MaxPool2d
    assert list(model.state_dict()) == list(unpooled.state_dict())  # (the pool holds no state)


def test_linear_only_conversion_leaves_max_pools():
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 64))
    with torch.no_grad():
        model[2].weight[:, ::2] = 0.0
    report = to_bank_sparse(model, bank_size=16, **EVERY)
    assert report.converted == ["2"] and type(model[0]) is nn.MaxPool2d
