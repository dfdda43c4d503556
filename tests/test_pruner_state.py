"""Items 2 and 5 of issue 15: a pruner state is validated whole (shapes, dtypes, types, ranges,
names, sizes) against the pruner it is loaded into, then applied at once; a bad one changes nothing."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from pruning_tools import pruner_state as S
from pruning_tools.pruner import pruned_specs, read_state_file, write_state_file
from pruning_tools.pytorch_pruning import Prune


def model(out_f=32, in_f=64, dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(in_f, out_f), torch.nn.ReLU(), torch.nn.Linear(out_f, 10)).to(dtype)


def make(m, **kwargs):
    return Prune(m, 0, 4, 2, {"*.weight": 0.75}, bank_size=16, **kwargs)


def trained(steps=2):
    prune = make(model())
    for _ in range(steps):
        prune.prune()
    return prune


def snapshot(prune):
    return prune.step, {k: v.clone() for k, v in prune.masks().items()}, dict(prune.state_dict()["mask_targets"])


def unchanged(prune, before):
    step, masks, targets = snapshot(prune)
    return step == before[0] and targets == before[2] and all(torch.equal(masks[k], before[1][k]) for k in masks)


# ---------------------------------------------------------------- item 2: shapes and dtypes


def test_state_of_another_shape_is_refused_naming_both_shapes():
    state = trained().state_dict()
    other = make(model(out_f=48))  # same names, other shapes
    with pytest.raises(ValueError, match=r"'0.weight'\] shape: \[32, 64\] in the state, \[48, 64\] here"):
        other.load_state_dict(state)


def test_same_element_count_in_another_shape_is_refused():
    state = trained().state_dict()
    other_model = torch.nn.Sequential(torch.nn.Linear(128, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    other = Prune(other_model, 0, 4, 2, {"*.weight": 0.75}, bank_size=16)
    assert other.config.params["0.weight"].numel == state["config"]["params"]["0.weight"]["shape"][0] * 64
    with pytest.raises(ValueError, match=r"shape: \[32, 64\] in the state, \[16, 128\] here"):
        other.load_state_dict(state)


def test_state_of_another_dtype_is_refused_naming_both():
    state = trained().state_dict()
    half = make(model(dtype=torch.float16))
    with pytest.raises(ValueError, match=r"dtype: 'float32' in the state, 'float16' here"):
        half.load_state_dict(state)


def test_older_states_without_shapes_are_still_checked_by_mask_size():
    state = trained().state_dict()
    unrecorded = copy.deepcopy(state)
    for spec in unrecorded["config"]["params"].values():
        spec["dtype"] = ""  # a dtype nobody recorded is no difference
    make(model()).load_state_dict(unrecorded)
    for spec in state["config"]["params"].values():
        del spec["shape"], spec["dtype"]  # as written before shapes were recorded
    make(model()).load_state_dict(state)  # same model: loads
    other_model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
    with pytest.raises(ValueError, match=r"masks'\]\['0.weight'\] has shape \[256\]: expected \[384\]"):
        Prune(other_model, 0, 4, 2, {"*.weight": 0.75}, bank_size=16).load_state_dict(state)


def test_the_model_reshaped_after_construction_is_an_error_not_a_silent_mask():
    m = model()
    prune = make(m)
    prune.prune()
    prune.prune()  # the next step, 3, only applies the masks
    m[0].weight = torch.nn.Parameter(torch.randn(16, 64))
    with pytest.raises(RuntimeError, match=r"'0.weight' now has shape \[16, 64\].*built for \[32, 64\]"):
        prune.sparsity()
    with pytest.raises(RuntimeError, match=r"'0.weight' has shape \[16, 64\] but its mask \[32, 64\]"):
        prune.prune()


# ---------------------------------------------------------------- item 5: validated whole, applied at once


def tampered(change):
    prune = trained()
    state = copy.deepcopy(prune.state_dict())
    change(state)
    return prune, state


BAD_STATES = {
    "step is a string": (lambda s: s.update(step="abc"), r"state\['step'\]='abc'"),
    "negative step": (lambda s: s.update(step=-1), r"state\['step'\]=-1"),
    "bool step": (lambda s: s.update(step=True), r"state\['step'\]=True"),
    "float step": (lambda s: s.update(step=2.5), r"state\['step'\]=2.5"),
    "float mask": (
        lambda s: s["masks"].update({"0.weight": s["masks"]["0.weight"].float()}),
        r"masks'\]\['0.weight'\] has dtype torch.float32: expected torch.uint8",
    ),
    "int64 mask": (
        lambda s: s["masks"].update({"0.weight": s["masks"]["0.weight"].long()}),
        "has dtype torch.int64: expected torch.uint8",
    ),
    "extra bytes": (
        lambda s: s["masks"].update({"0.weight": torch.cat([s["masks"]["0.weight"], s["masks"]["0.weight"][:3]])}),
        r"has shape \[259\]: expected \[256\]",
    ),
    "missing mask": (lambda s: s["masks"].pop("2.weight"), r"masks'\]\['2.weight'\] is missing"),
    "mask of a stranger": (
        lambda s: s["masks"].update({"ghost": torch.zeros(1, dtype=torch.uint8)}),
        r"names parameters this pruner does not have: \['ghost'\]",
    ),
    "mask not a tensor": (lambda s: s["masks"].update({"0.weight": [255] * 256}), "is a list"),
    "target out of range": (lambda s: s["mask_targets"].update({"0.weight": 1.5}), r"'0.weight'\]=1.5"),
    "target NaN": (lambda s: s["mask_targets"].update({"0.weight": math.nan}), "mask_targets"),
    "target a string": (lambda s: s["initial_sparsity"].update({"0.weight": "0"}), "initial_sparsity"),
    "targets missing a parameter": (lambda s: s["mask_targets"].pop("2.weight"), r"lacks the parameters"),
    "unknown entry": (lambda s: s.update(extra=1), r"unknown entries \['extra'\]"),
    "entry missing": (lambda s: s.pop("initial_sparsity"), r"lacks the entries \['initial_sparsity'\]"),
    "config not a dict": (lambda s: s.update(config="fix"), "expected a dict of settings"),
    "settings differ": (lambda s: s["config"].update(frequency=3), "frequency: 3 in the state, 2 here"),
    "unknown setting": (lambda s: s["config"].update(speed=1), r"unknown settings \['speed'\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_bad_state_is_refused_and_nothing_changes(case):
    change, message = BAD_STATES[case]
    prune, state = tampered(change)
    prune.prune()  # step 3: the pruner moved on from the state
    before = snapshot(prune)
    with pytest.raises(ValueError, match=message):
        prune.load_state_dict(state)
    assert unchanged(prune, before)


def test_padding_bits_must_be_zero():
    m = torch.nn.Linear(5, 3)  # 15 weights: one padding bit in 2 bytes
    prune = Prune(m, 0, 0, 1, {"weight": 0.5}, bank_size=4)
    prune.prune()
    state = prune.state_dict()
    state["masks"]["weight"] = state["masks"]["weight"].clone()
    state["masks"]["weight"][-1] |= 1
    with pytest.raises(ValueError, match="padding bits are not zero"):
        prune.load_state_dict(state)


def test_every_parameter_has_a_mask_and_older_states_without_untouched_ones_load():
    prune = make(model())
    state = prune.state_dict()  # before any refresh: all-True masks, written anyway
    assert sorted(state["masks"]) == ["0.weight", "2.weight"]
    assert all(int(p.sum()) == 255 * p.numel() for p in state["masks"].values())
    older = dict(state, masks={})  # a state of an earlier release: nothing pruned, no masks
    fresh = make(model())
    fresh.load_state_dict(older)
    assert all(bool(m.all()) for m in fresh.masks().values())


def test_a_valid_state_still_resumes_exactly():
    prune = trained(3)
    again = make(model())
    again.load_state_dict(prune.state_dict())
    assert again.step == 3
    assert all(torch.equal(again.masks()[k], v) for k, v in prune.masks().items())


def test_state_files_refuse_unknown_tensors_and_bad_json(tmp_path):
    from pruning_tools import integrity

    prune = trained()
    path = tmp_path / "s.safetensors"
    prune.save(path)
    state = read_state_file(path)
    assert sorted(state["masks"]) == ["0.weight", "2.weight"]
    integrity.save_file(
        {"masks/0.weight": np.zeros(256, np.uint8), "velocity/0.weight": np.zeros(2, np.float32)},
        path,
        {"format": S.STATE_FORMAT, "state": "{}"},
    )
    with pytest.raises(ValueError, match="'velocity/0.weight' is not an entry of a pruner state"):
        read_state_file(path)
    integrity.save_file({}, path, {"format": S.STATE_FORMAT, "state": "{broken"})
    with pytest.raises(ValueError, match="not JSON"):
        read_state_file(path)
    write_state_file(prune._plain_state(), path)
    prune.load(path)


def test_pruned_specs_validate_what_they_read():
    state = trained().state_dict()
    state["config"]["params"]["0.weight"]["bank_size"] = "16"
    with pytest.raises(ValueError, match=r"params'\]\['0.weight'\]\['bank_size'\]='16'"):
        pruned_specs(state)
    state = trained().state_dict()
    state["mask_targets"]["0.weight"] = 2.0
    with pytest.raises(ValueError, match=r"mask_targets'\]\['0.weight'\]=2.0"):
        pruned_specs(state)


def test_entries_are_declared_in_one_place():
    """A new per-parameter entry (as the movement scores were) is one declaration: validated like masks."""
    entry = S.ParamTensors("velocity", torch.float32, lambda shape: shape, lambda name, numbers: False)
    prune = trained()
    state = prune.state_dict()
    state["velocity"] = {"0.weight": torch.zeros(32, 64)}
    with pytest.raises(ValueError, match=r"unknown entries \['velocity'\]"):
        S.validate_state(state, prune.config, {n: s.shape for n, s in prune.config.params.items()})
    tensors = S.PER_PARAMETER_TENSORS
    try:
        S.PER_PARAMETER_TENSORS = (*tensors, entry)
        shapes = {n: s.shape for n, s in prune.config.params.items()}
        valid = S.validate_state(state, prune.config, shapes)
        assert valid.tensors["velocity"]["0.weight"].shape == (32, 64) and "2.weight" not in valid.tensors["velocity"]
        state["velocity"]["0.weight"] = torch.zeros(64, 32)
        with pytest.raises(ValueError, match=r"\['0.weight'\] has shape \[64, 32\]: expected \[32, 64\]"):
            S.validate_state(state, prune.config, shapes)
    finally:
        S.PER_PARAMETER_TENSORS = tensors


@pytest.mark.mxnet
def test_mxnet_state_of_another_shape_is_refused():
    mx = pytest.importorskip("mxnet")
    from pruning_tools import mxnet_pruning

    def dense(units):
        net = mx.gluon.nn.Dense(units, in_units=64, prefix="fc_")
        net.initialize()
        return net

    a = mxnet_pruning.Prune(dense(32), 0, 0, 1, {"fc_weight": 0.5}, bank_size=16)
    a.prune()
    b = mxnet_pruning.Prune(dense(48), 0, 0, 1, {"fc_weight": 0.5}, bank_size=16)
    with pytest.raises(ValueError, match=r"shape: \[32, 64\] in the state, \[48, 64\] here"):
        b.load_state_dict(a.state_dict())
    state = a.state_dict()
    state["step"] = "abc"
    with pytest.raises(ValueError, match="step"):
        a.load_state_dict(state)
