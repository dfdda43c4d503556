"""Item 3 of issue 15: after ``model.load_state_dict(sd, assign=True)`` (or any replaced parameter)
the pruner masks, counts and checks the tensors the model uses now, never the orphaned ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning_tools.pytorch_pruning import Prune


def pruned():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    prune = Prune(model, 0, 0, 1, {"0.weight": 0.9, "2.weight": 0.5}, bank_size=16)
    prune.prune()  # one-shot: masks frozen from here on
    return model, prune


def zeros(t):
    return float((t == 0).float().mean())


def test_load_state_dict_assign_is_followed():
    """The reproduction: the model was dense while sparsity() reported 0.906 and check() True."""
    model, prune = pruned()
    old = model[0].weight
    fresh = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(fresh, assign=True)
    assert model[0].weight is not old
    layers, _ = prune.sparsity()
    assert layers["0.weight"] == zeros(model[0].weight) == 0.0  # what the model uses: dense
    assert prune.check()[0]["0.weight"] is False  # and not bank-balanced, said so
    old_before = old.detach().clone()
    with torch.no_grad():
        old.fill_(1.0)  # the orphan: nobody uses it any more
    prune.prune()
    assert zeros(model[0].weight) == pytest.approx(0.875)  # bank 16 at 0.9 keeps 2 of 16
    assert prune.sparsity()[0]["0.weight"] == zeros(model[0].weight)
    assert prune.check() == ({"0.weight": True, "2.weight": True}, True)
    assert torch.equal(old, torch.ones_like(old)) and not torch.equal(old, old_before)  # orphan untouched
    assert torch.equal(model[0].weight != 0, prune.masks()["0.weight"])


def test_a_replaced_submodule_is_followed():
    model, prune = pruned()
    model[2] = nn.Linear(64, 8)
    assert prune.sparsity()[0]["2.weight"] == 0.0
    prune.prune()
    assert prune.sparsity()[0]["2.weight"] == zeros(model[2].weight) == 0.5


def test_a_removed_parameter_is_an_error_naming_it():
    model, prune = pruned()
    del model[2]
    with pytest.raises(RuntimeError, match="'2.weight' is no longer in the model"):
        prune.prune()


def test_the_optimizer_and_the_pruner_see_the_same_tensors_after_a_swap():
    model, prune = pruned()
    model.load_state_dict({k: torch.randn_like(v) for k, v in model.state_dict().items()}, assign=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built on the new parameters
    for _ in range(3):
        loss = model(torch.randn(4, 64)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        prune.prune()
    assert zeros(model[0].weight) == pytest.approx(0.875) and prune.check()[1]
