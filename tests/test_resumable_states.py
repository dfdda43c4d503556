"""Every state a pruner writes can be read back: no run becomes unresumable.

Over every pattern, every start (plain, ``restore_sparsity`` with zeros that are not bank-balanced,
``fix_sparsity``), both criteria, with skipped mixed-precision steps (inf gradients) and NaN weights:
after every ``prune()`` the state loads into a fresh pruner of the same model, and at the end the
file ``Prune.save`` wrote loads too.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from pruning_tools.pytorch_pruning import Prune

BALANCES = ("fix", "none", "global")
STARTS = ("plain", "restore_sparsity", "fix_sparsity")
CRITERIA = ("magnitude", "movement")


def make_model(start: str, nan_weight: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    with torch.no_grad():
        if start != "plain":
            model[0].weight[:, :8] = 0  # bank 8: the first bank of every row empty, the second full
            model[2].weight[:2] = 0
        if nan_weight:
            model[0].weight[5, 12] = float("nan")
    return model


def make_prune(model, balance, start, criterion) -> Prune:
    options = {start: True} if start != "plain" else {}
    return Prune(model, 1, 6, 2, {"*.weight": 0.75}, balance=balance, bank_size=8, criterion=criterion, **options)


CASES = [
    (balance, start, criterion, nan)
    for balance, start, criterion, nan in itertools.product(BALANCES, STARTS, CRITERIA, (False, True))
    if not (criterion == "movement" and nan)  # a NaN weight makes every movement step non-finite: see below
]


@pytest.mark.parametrize("balance,start,criterion,nan_weight", CASES)
def test_every_state_written_loads(tmp_path, balance, start, criterion, nan_weight):
    model = make_model(start, nan_weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreachable targets, NaN weights, skipped steps: reported elsewhere
        prune = make_prune(model, balance, start, criterion)
        g = torch.Generator().manual_seed(1)
        for step in range(1, 10):
            x, y = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(torch.nan_to_num(model(x)), y)
            loss.backward()
            if step % 3 == 0:  # what a step GradScaler skipped leaves behind
                model[2].weight.grad[0, 0] = float("inf")
            else:
                optimizer.step()
            prune.prune()
            fresh = make_prune(make_model(start, nan_weight), balance, start, criterion)
            fresh.load_state_dict(prune.state_dict())
            assert fresh.step == prune.step
        prune.save(tmp_path / "state.safetensors")
        make_prune(make_model(start, nan_weight), balance, start, criterion).load(tmp_path / "state.safetensors")


def test_a_movement_run_whose_every_step_is_skipped_says_so_at_the_refresh():
    model = make_model("plain", nan_weight=True)
    prune = Prune(model, 0, 4, 2, {"*.weight": 0.75}, bank_size=8, criterion="movement")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.zeros(8, dtype=torch.long)).backward()
        prune.prune()
        with pytest.raises(RuntimeError, match=r"2 step\(s\) since then had non-finite gradients or weights"):
            prune.prune()  # the first refresh
