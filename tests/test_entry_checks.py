"""No silent wrong result and no unresumable run: what the pruner refuses at the point of entry, and
the one rule for non-finite gradients under ``criterion="movement"``.

- A step with a non-finite gradient (what a ``GradScaler`` step that is skipped leaves) or weight, or
  whose scores would overflow, adds nothing to any movement score; one warning; every state saved
  afterwards loads (a resumed run is possible).
- A state whose masks contradict their targets is refused; a state that agrees is not.
- Two settings for one tied weight: two exact names are refused, patterns follow the rule and warn.
- A meta-device model is refused when the pruner is built, naming the parameter.
- ``bank_size`` beyond 2**31 - 1 is refused where it is validated.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from pruning_tools import masks as M
from pruning_tools.criteria import Movement
from pruning_tools.pytorch_pruning import Prune

INF, NAN = float("inf"), float("nan")


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def step(model, prune, optimizer, seed, poison=None):
    """One training step; ``poison(params)`` spoils something after the optimizer step, as a skipped
    mixed-precision step leaves non-finite gradients behind."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    if poison is not None:
        poison(dict(model.named_parameters()))
    prune.prune()


def inf_grad(params):
    params["2.weight"].grad[0, 0] = INF


def nan_grad(params):
    params["0.weight"].grad[3, 1] = NAN


def overflow(params):
    params["0.weight"].grad.fill_(3e38)  # finite, but -w * g summed overflows float32 for some weight
    with torch.no_grad():
        params["0.weight"].mul_(1e10)


@pytest.mark.parametrize("poison", [inf_grad, nan_grad, overflow], ids=lambda f: f.__name__)
def test_a_non_finite_step_adds_nothing_warns_once_and_the_state_still_loads(tmp_path, poison):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    prune = Prune(model, 0, 20, 5, {"*.weight": 0.5}, bank_size=8, criterion="movement")
    step(model, prune, optimizer, 1)
    before = {n: s.clone() for n, s in prune.state_dict()["scores"].items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step(model, prune, optimizer, 2, poison)
        if poison is overflow:
            with torch.no_grad():
                model[0].weight.div_(1e10)
        step(model, prune, optimizer, 3, poison if poison is not overflow else None)
    after = prune.state_dict()["scores"]
    assert prune.skipped_score_steps == (1 if poison is overflow else 2)
    for name in before:  # the poisoned steps added nothing, to any parameter
        if poison is overflow:
            continue  # step 3 was a good one
        assert torch.equal(after[name], before[name]), name
    messages = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert len(messages) == 1 and "GradScaler" in messages[0]
    assert all(bool(torch.isfinite(s).all()) for s in after.values())
    prune.save(tmp_path / "state.safetensors")
    resumed = Prune(make_model(), 0, 20, 5, {"*.weight": 0.5}, bank_size=8, criterion="movement")
    resumed.load(tmp_path / "state.safetensors")  # a Trainer resuming from this checkpoint
    assert resumed.step == prune.step
    for _ in range(3):
        step(model, prune, optimizer, 4)  # training goes on: scores accumulate again


def test_a_gradscaler_skipped_step_on_the_cpu_leaves_a_resumable_state(tmp_path):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38)  # the first step overflows and is skipped
    prune = Prune(model, 0, 10, 5, {"*.weight": 0.5}, bank_size=8, criterion="movement")
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            optimizer.zero_grad()
            scaler.scale(100 * torch.nn.functional.cross_entropy(model(x), y)).backward()
            scaler.step(optimizer)
            scaler.update()
            prune.prune()
    assert prune.skipped_score_steps >= 1
    assert any("non-finite" in str(w.message) for w in caught)
    prune.save(tmp_path / "s.safetensors")
    Prune(make_model(), 0, 10, 5, {"*.weight": 0.5}, bank_size=8, criterion="movement").load(tmp_path / "s.safetensors")


def test_the_criterion_alone_follows_the_same_rule():
    movement = Movement({"w": (2, 2)}, {"w": torch.device("cpu")})
    w = torch.ones(2, 2)
    assert movement.accumulate("w", w, torch.full((2, 2), 0.5))
    assert not movement.accumulate("w", w, torch.tensor([[INF, 0.0], [0.0, 0.0]]))
    assert not movement.accumulate("w", torch.full((2, 2), NAN), torch.ones(2, 2))
    assert torch.equal(movement.scores("w"), torch.full((2, 2), -0.5))


# ---------------------------------------------------------------- masks against their targets


def trained_state(**kwargs):
    model = make_model()
    prune = Prune(model, 0, 4, 2, {"0.weight": 0.75, "2.weight": {"sparsity": 0.5, "balance": "none"}},
                  bank_size=8, **kwargs)  # fmt: skip
    for _ in range(4):
        prune.prune()
    return model, prune, prune.state_dict()


@pytest.mark.parametrize("name", ["0.weight", "2.weight"])
def test_an_all_zero_mask_at_a_target_below_one_is_refused(name):
    model, prune, state = trained_state()
    state["masks"][name] = torch.zeros_like(state["masks"][name])
    fresh = Prune(make_model(), 0, 4, 2, {"0.weight": 0.75, "2.weight": {"sparsity": 0.5, "balance": "none"}},
                  bank_size=8)  # fmt: skip
    weight_before = dict(fresh.model.named_parameters())[name].detach().clone()
    with pytest.raises(ValueError, match=rf"state\['masks'\]\['{name}'\] contradicts its target: it keeps 0 of"):
        fresh.load_state_dict(state)
    assert torch.equal(dict(fresh.model.named_parameters())[name], weight_before)  # nothing applied


@pytest.mark.parametrize("name", ["0.weight", "2.weight"])
def test_a_mask_keeping_more_than_its_target_is_refused(name):
    _, prune, state = trained_state()
    state["masks"][name] = M.pack_bits(torch.ones(dict(prune.model.named_parameters())[name].shape, dtype=torch.bool))
    with pytest.raises(ValueError, match="contradicts its target"):
        prune.load_state_dict(state)


@pytest.mark.parametrize("option", ["restore_sparsity", "fix_sparsity"])
def test_masks_that_agree_with_their_targets_load_with_restored_zeros_too(option):
    """Every state a pruner writes loads: at step 0 a restored mask is the model's own zeros (here not
    bank-balanced: one bank of each row empty, the other full), later ones keep within the budgets."""
    _, prune, state = trained_state()
    prune.load_state_dict(state)
    model = make_model()
    with torch.no_grad():
        model[0].weight[:, :8] = 0
    restored = Prune(model, 0, 4, 2, {"0.weight": 0.75}, bank_size=8, **{option: True})
    for _ in range(5):
        restored.load_state_dict(restored.state_dict())
        restored.prune()
    state = restored.state_dict()
    state["masks"]["0.weight"] = M.pack_bits(torch.ones(32, 16, dtype=torch.bool))
    if option == "fix_sparsity":  # the mask of the model's own zeros, with one weight more
        with pytest.raises(ValueError, match="where the initial sparsity 0.5 leaves 256"):
            restored.load_state_dict(state)


# ---------------------------------------------------------------- settings given at the point of entry


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 64)
        self.head = torch.nn.Linear(64, 16, bias=False)
        self.head.weight = self.emb.weight


def test_two_sparsities_for_one_tied_weight_by_exact_names_are_refused():
    with pytest.raises(ValueError, match="'emb.weight' and 'head.weight' name one parameter"):
        Prune(Tied(), 0, 2, 1, {"emb.weight": 0.5, "head.weight": 0.75}, bank_size=16)
    prune = Prune(Tied(), 0, 2, 1, {"emb.weight": 0.5, "head.weight": 0.5}, bank_size=16)  # the same: fine
    assert prune.config.params["emb.weight"].sparsity == 0.5


@pytest.mark.parametrize(
    "prune_dict,applies", [({"emb.*": 0.5, "head.*": 0.75}, 0.75), ({"emb.weight": 0.5, "head.*": 0.75}, 0.5)]
)
def test_tied_weight_patterns_follow_the_rule_and_warn(prune_dict, applies):
    with pytest.warns(UserWarning, match="different settings under different names"):
        prune = Prune(Tied(), 0, 2, 1, prune_dict, bank_size=16)
    assert prune.config.params["emb.weight"].sparsity == applies


def test_a_meta_device_model_is_refused_when_the_pruner_is_built():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(64, 16))
    with pytest.raises(ValueError, match="'0.weight' is on the meta device"):
        Prune(model, 0, 2, 1, {"0.weight": 0.5}, bank_size=16)


@pytest.mark.parametrize("bank_size", [2**31, 2**63 + 5])
def test_a_bank_size_beyond_what_the_kernels_address_is_refused_where_it_is_validated(bank_size):
    with pytest.raises(ValueError, match=rf"bank_size={bank_size} is not allowed: expected an integer in \[2, "):
        Prune(make_model(), 0, 2, 1, {"0.weight": 0.5}, bank_size=bank_size)
    with pytest.raises(ValueError, match="bank_size"):
        M.bank_mask(torch.randn(4, 64), None, 0.5, bank_size)
    assert math.isfinite(float(2**31 - 1))  # the largest allowed is still exact as a float
    M.bank_mask(torch.randn(4, 64), None, 0.5, 2**31 - 1)  # one tail bank per row
