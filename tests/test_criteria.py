"""Training-time criteria: movement scores, the masks they choose, their place in the pruner state."""

from __future__ import annotations

import copy

import pytest
import torch

from pruning_tools import masks as M
from pruning_tools.pruner import read_state_file
from pruning_tools.pytorch_pruning import Prune


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def train(model, prune, optimizer, data):
    for x, y in data:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        prune.prune()


PRUNE_DICT = {"0.weight": 0.75, "2.weight": {"sparsity": 0.5, "balance": "none"}}


def test_movement_scores_are_minus_weight_times_gradient_and_choose_the_mask():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    prune = Prune(model, 2, 0, 1, PRUNE_DICT, bank_size=8, criterion="movement")  # one refresh, at step 3
    params = dict(model.named_parameters())
    expected = {name: torch.zeros_like(params[name]) for name in PRUNE_DICT}
    for step, (x, y) in enumerate(batches(3), 1):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for name in expected:  # what prune() reads: the updated weight and the gradient
            expected[name] -= params[name].detach() * params[name].grad
        weights = {name: params[name].detach().clone() for name in expected}
        prune.prune()
        if step < 3:
            for name in expected:
                assert torch.allclose(prune.state_dict()["scores"][name], expected[name], rtol=1e-5, atol=1e-9)
    masks = prune.masks()
    assert torch.equal(masks["0.weight"], M.bank_mask(weights["0.weight"], None, 0.75, 8, scores=expected["0.weight"]))
    assert torch.equal(
        masks["2.weight"], M.unstructured_mask(weights["2.weight"], None, 0.5, scores=expected["2.weight"])
    )
    assert not torch.equal(masks["0.weight"], M.bank_mask(weights["0.weight"], None, 0.75, 8))  # not by |w|
    assert prune.check()[1]
    scores = prune.state_dict()["scores"]  # not reset by the refresh: they go on accumulating
    assert all(torch.allclose(scores[name], expected[name], rtol=1e-5, atol=1e-9) for name in expected)


def test_movement_keeps_pruned_weights_pruned_with_restore_sparsity():
    model = make_model()
    with torch.no_grad():
        model[0].weight[:, ::2] = 0  # half already pruned
    dead = model[0].weight == 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    prune = Prune(model, 0, 4, 2, {"0.weight": 0.75}, restore_sparsity=True, bank_size=16, criterion="movement")
    train(model, prune, optimizer, batches(6))
    assert bool((model[0].weight[dead] == 0).all()) and prune.check()[1]
    assert prune.sparsity()[0]["0.weight"] == 0.75


def test_resume_is_bit_identical_with_movement_scores(tmp_path):
    data = batches(12)

    def run(split: int | None):
        model = make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        prune = Prune(model, 1, 8, 3, PRUNE_DICT, bank_size=8, criterion="movement")
        if split is None:
            train(model, prune, optimizer, data)
            return model, prune
        train(model, prune, optimizer, data[:split])
        prune.save(tmp_path / "state.safetensors")
        torch.save(prune.state_dict(), tmp_path / "state.pt")
        saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
        resumed = make_model(seed=5)  # different initial weights: everything must come from the files
        resumed.load_state_dict(saved_model)
        optimizer = torch.optim.Adam(resumed.parameters(), lr=1e-2)
        optimizer.load_state_dict(saved_opt)
        prune = Prune(resumed, 1, 8, 3, PRUNE_DICT, bank_size=8, criterion="movement")
        prune.load(tmp_path / "state.safetensors")
        train(resumed, prune, optimizer, data[split:])
        return resumed, prune

    reference, ref_prune = run(None)
    for split in (2, 5):  # between refreshes, scores half accumulated
        model, prune = run(split)
        for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), name
        for name, mask in ref_prune.masks().items():
            assert torch.equal(mask, prune.masks()[name])
    state = read_state_file(tmp_path / "state.safetensors")
    assert set(state["scores"]) == set(PRUNE_DICT) and state["scores"]["0.weight"].dtype.name == "float32"
    pt = torch.load(tmp_path / "state.pt", weights_only=True)
    assert torch.equal(pt["scores"]["0.weight"], torch.as_tensor(state["scores"]["0.weight"]))


def test_movement_without_gradients_is_a_clear_error():
    model = make_model()
    prune = Prune(model, 0, 0, 1, {"0.weight": 0.5}, bank_size=4, criterion="movement")
    with pytest.raises(RuntimeError, match=r"no gradient of 0.weight.*before optimizer.zero_grad\(\)"):
        prune.prune()
    assert prune.masks()["0.weight"].all()  # nothing changed


def test_criterion_is_validated_and_keyword_only():
    model = make_model()
    with pytest.raises(ValueError, match=r"criterion='gradient' is not allowed: expected one of 'magnitude', 'mo"):
        Prune(model, 0, 0, 1, {"0.weight": 0.5}, criterion="gradient")
    with pytest.raises(TypeError):
        Prune(model, 0, 0, 1, {"0.weight": 0.5}, False, False, "fix", "default", "movement")  # type: ignore[misc]
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"criterion='movement' is not allowed for '0.weight'"):
        Prune(model, 0, 0, 1, {"0.weight": 0.5}, criterion="movement")


def test_magnitude_state_is_unchanged_and_old_states_load():
    model = make_model()
    prune = Prune(model, 0, 0, 1, {"0.weight": 0.5})
    prune.prune()
    state = prune.state_dict()
    assert "scores" not in state and state["config"]["criterion"] == "magnitude"
    old = copy.deepcopy(state)
    del old["config"]["criterion"]  # written before criteria existed
    prune.load_state_dict(old)
    moving = Prune(make_model(), 0, 0, 1, {"0.weight": 0.5}, criterion="movement")
    with pytest.raises(
        ValueError, match="different settings: \\[\"criterion: 'magnitude' in the state, 'movement' here"
    ):
        moving.load_state_dict(old)
    with_scores = dict(state, scores={"0.weight": torch.zeros(32, 16)})
    with pytest.raises(ValueError, match=r"holds movement scores, but this pruner has criterion='magnitude'"):
        prune.load_state_dict(with_scores)


def test_movement_state_with_a_wrong_score_is_refused_before_any_change():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    prune = Prune(model, 0, 4, 2, {"0.weight": 0.5, "2.weight": 0.5}, bank_size=4, criterion="movement")
    train(model, prune, optimizer, batches(1))
    state = prune.state_dict()
    before = {k: v.clone() for k, v in state["scores"].items()}
    state["scores"]["2.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"state\['scores'\]\['2.weight'\] has shape \[3\]: expected \[4, 32\]"):
        prune.load_state_dict(state)
    state["scores"]["2.weight"] = torch.full((4, 32), float("nan"))
    with pytest.raises(ValueError, match=r"state\['scores'\]\['2.weight'\] is not valid: it holds non-finite"):
        prune.load_state_dict(state)
    del state["scores"]["2.weight"]
    with pytest.raises(ValueError, match=r"state\['scores'\] lacks the parameters \['2.weight'\]"):
        prune.load_state_dict(state)
    after = prune.state_dict()["scores"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_movement_global_balance():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    prune = Prune(model, 0, 4, 2, {"*.weight": 0.8}, balance="global", criterion="movement")
    train(model, prune, optimizer, batches(5))
    assert prune.sparsity()[1] == pytest.approx(0.8, abs=1e-3) and prune.check()[1]


@pytest.mark.mxnet
def test_mxnet_keeps_magnitude():
    mx = pytest.importorskip("mxnet")
    from pruning_tools import mxnet_pruning

    net = mx.gluon.nn.Dense(4, in_units=8)
    net.initialize()
    with pytest.raises(ValueError, match=r"criterion='movement' is not allowed with MXNet"):
        mxnet_pruning.Prune(net, 0, 0, 1, {"*weight": 0.5}, criterion="movement")
    assert mxnet_pruning.Prune(net, 0, 0, 1, {"*weight": 0.5}, criterion="magnitude").config.criterion == "magnitude"
