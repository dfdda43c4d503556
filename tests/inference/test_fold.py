"""BatchNorm folded into the converted convolution before it: eval mode folds, training mode keeps
BatchNorm's semantics, state_dict and deepcopy unchanged, and only where the graph allows."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pruning_tools import pytorch_pruning
from pruning_tools.benchmarks.models import resnet50
from pruning_tools.inference import BankSparseConv, convert, to_bank_sparse
from pruning_tools.inference.fold import BankSparseConvBN, FoldedBatchNorm2d

from .conftest import TOL

EVERY = dict(min_speedup=1e-9, min_weights=0)


def trained_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def pruned_resnet():
    model = trained_norms(resnet50(width=16, num_classes=10, blocks=(1, 1, 1, 1)))
    names = {n: 0.75 for n, p in model.named_parameters() if p.dim() == 4 and p.shape[1] >= 16}
    prune = pytorch_pruning.Prune(model, 0, 0, 1, names, bank_size=16)
    prune.prune()
    return model.eval(), prune


def converted_without(monkeypatch, model: nn.Module, prune, step: str) -> nn.Module:
    """A copy of ``model`` converted with every layer while ``convert.<step>`` (``conv_bn_pairs``,
    ``conv_relu_pairs``) finds nothing: the conversion without folding, or without fusing."""
    out = copy.deepcopy(model)
    with monkeypatch.context() as patch:
        patch.setattr(convert, step, lambda *args: [])
        to_bank_sparse(out, prune.state_dict(), **EVERY)
    return out


def test_resnet_batch_norms_are_folded_in_eval_mode(path, monkeypatch):
    model, prune = pruned_resnet()
    reference = copy.deepcopy(model)
    unfolded = converted_without(monkeypatch, model, prune, "conv_bn_pairs")
    assert not any(isinstance(m, BankSparseConvBN) for m in unfolded.modules())
    report = to_bank_sparse(model, prune.state_dict(), **EVERY)
    folded = [m for m in model.modules() if isinstance(m, BankSparseConvBN)]
    norms = [m for m in model.modules() if isinstance(m, FoldedBatchNorm2d)]
    assert len(folded) == len(norms) == len(report.converted) > 0  # every converted conv had its BatchNorm
    assert any("BatchNorm folded" in note and f"{len(folded)} pairs" in note for note in report.notes)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), **TOL)
        probe = torch.randn(1, norms[0].num_features, 4, 4)
        assert norms[0](probe) is probe  # eval mode: the convolution applied it
    assert list(model.state_dict()) == list(unfolded.state_dict())  # folding renames nothing
    for name, t in unfolded.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], t, rtol=0, atol=0)  # and keeps tensors unfolded


def test_training_mode_keeps_batch_norm_semantics(path):
    model, prune = pruned_resnet()
    reference = copy.deepcopy(model)
    to_bank_sparse(model, prune.state_dict(), **EVERY)
    model.train()
    reference.train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), **TOL)  # batch statistics
        ours, theirs = dict(model.named_buffers()), dict(reference.named_buffers())
        statistics = [name for name in theirs if name.endswith(("running_mean", "running_var"))]
        assert statistics and all(name in ours for name in statistics)
        for name in statistics:
            torch.testing.assert_close(ours[name], theirs[name], **TOL)  # updated alike
        model.eval()
        reference.eval()
        torch.testing.assert_close(model(x), reference(x), **TOL)  # folded again with the new statistics


def test_changed_statistics_and_state_dict_refold_and_deepcopy(path):
    model, prune = pruned_resnet()
    to_bank_sparse(model, prune.state_dict(), **EVERY)
    x = torch.randn(1, 3, 32, 32)
    state = copy.deepcopy(model.state_dict())
    twin = copy.deepcopy(model)
    conv = next(m for m in twin.modules() if isinstance(m, BankSparseConvBN))
    assert conv.__dict__["_bn"] in list(twin.modules())  # the copy's convolution folds the copy's BatchNorm
    with torch.no_grad():
        before = model(x)
        for m in model.modules():
            if isinstance(m, FoldedBatchNorm2d):
                m.running_var.mul_(4.0)  # in place: the folded weights are rebuilt
        changed = model(x)
        assert not torch.allclose(changed, before, **TOL)
        model.load_state_dict(state)  # copied in place: folded again
        torch.testing.assert_close(model(x), before, **TOL)
        torch.testing.assert_close(twin(x), before, **TOL)


class Shared(nn.Module):
    """conv -> bn, but the conv's output also feeds a second path: no fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(64)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class Untraceable(Shared):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.bn(self.conv(x))
        return self.bn(self.conv(x))


@pytest.mark.parametrize("model_class, note", [(Shared, None), (Untraceable, "could not be traced")])
def test_folding_only_where_the_graph_allows(model_class, note):
    torch.manual_seed(0)
    model = trained_norms(model_class()).eval()
    prune = pytorch_pruning.Prune(model, 0, 0, 1, {"conv.weight": 0.9375})
    prune.prune()
    reference = copy.deepcopy(model)
    report = to_bank_sparse(model, prune, **EVERY)
    assert report.converted == ["conv"] and type(model.conv) is BankSparseConv and type(model.bn) is nn.BatchNorm2d
    assert not any("BatchNorm folded" in n for n in report.notes)
    assert any(note in n for n in report.notes) if note else not report.notes
    x = torch.randn(1, 64, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), **TOL)
