"""The calibrated rule: this machine's dense and bank-sparse speeds, the cost model, the cache file
(keyed, untrusted), and to_bank_sparse's decisions and report from it."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import pruning_tools
from pruning_tools import _native, pytorch_pruning
from pruning_tools.inference import calibration as calib
from pruning_tools.inference import to_bank_sparse

from .conftest import FIXED_RULE


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    """Each test with an empty cache directory and nothing remembered in the process."""
    monkeypatch.setenv("PRUNING_TOOLS_CACHE", str(tmp_path))
    calib.reset()
    yield tmp_path
    calib.reset()


def fake_measure(calls: list):
    def measure(k=None, rounds=5):
        calls.append(k)
        return calib.Calibration(k or calib.key(), *list(FIXED_RULE.__dict__.values())[1:])

    return measure


def test_measured_on_this_machine_for_every_family():
    result = calib.measure()
    assert set(result.points) == set(calib.FAMILIES)
    assert [(p.weights, p.n) for p in result.points["linear"]] == [
        (w, n) for w in (256**2, 1024**2) for n in (1, 8, 64, 256)
    ]
    for points in result.points.values():
        assert all(p.dense_ns_per_mac > 0 and p.sparse_ns_per_slot > 0 for p in points)
    assert result.dense_call_us > 0 and result.sparse_call_us > 0
    assert result.key == calib.key() and result.key["threads"] == str(torch.get_num_threads())
    assert calib.Calibration.from_json(result.to_json()) == result


def test_cached_beside_the_kernels_keyed_by_setting_and_rerun_by_calibrate(monkeypatch, own_cache):
    calls: list = []
    monkeypatch.setattr(calib, "measure", fake_measure(calls))
    first = calib.calibration()
    assert len(calls) == 1 and calib.calibration() is first  # once per process
    files = list(own_cache.glob("calibration-*.json"))
    assert len(files) == 1 and files[0] == calib.path_of(calib.key())
    key = json.loads(files[0].read_text())["key"]
    assert key["cpu"] == _native.isa.cpu_model() and key["threads"] == str(torch.get_num_threads())
    calib.reset()
    assert calib.calibration() == first and len(calls) == 1  # read back from the file, not measured
    assert pruning_tools.calibrate() == first and len(calls) == 2  # calibrate() measures again
    previous = torch.get_num_threads()
    torch.set_num_threads(previous + 1)
    try:
        calib.calibration()
        assert len(calls) == 3 and len(list(own_cache.glob("calibration-*.json"))) == 2  # another thread count
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: "not json {",
        lambda d: json.dumps({**d, "version": 99}),
        lambda d: json.dumps({**d, "dense_call_us": -1.0}),
        lambda d: json.dumps(
            {**d, "points": {**d["points"], "linear": [{"weights": 9, "n": 8, "dense_ns_per_mac": 1.0}]}}
        ),
        lambda d: json.dumps({**d, "points": {**d["points"], "conv": []}}),
        lambda d: json.dumps({**d, "key": {**d["key"], "cpu": "another CPU"}}),
        lambda d: json.dumps({**d, "sparse_call_us": float("nan")}).replace("NaN", "1e999"),
    ],
    ids=["garbage", "version", "negative", "missing field", "no points", "another key", "infinite"],
)
def test_a_bad_or_foreign_file_is_measured_again(monkeypatch, tamper):
    calls: list = []
    monkeypatch.setattr(calib, "measure", fake_measure(calls))
    calib.calibration()
    path = calib.path_of(calib.key())
    path.write_text(tamper(json.loads(path.read_text())))
    calib.reset()
    calib.calibration()
    assert len(calls) == 2
    calib.Calibration.from_json(path.read_text())  # replaced by a valid one


def test_the_cost_model():
    rule = calib.Calibration(
        {},
        2.0,  # µs per dense call
        4.0,  # µs per bank-sparse call
        {f: (calib.Point(16000, 1, 1.0, 2.0), calib.Point(16000, 100, 1.0, 8.0)) for f in calib.FAMILIES},
    )
    weights, stored = 16000, 1000
    at_1 = (2000 + 1 * weights * 1.0) / (4000 + 1 * stored * 2.0)
    at_100 = (2000 + 100 * weights * 1.0) / (4000 + 100 * stored * 8.0)
    assert math.isclose(rule.expected("linear", weights, stored, 1), at_1)
    assert math.isclose(rule.expected("linear", weights, stored, 100), at_100)
    assert math.isclose(rule.expected("linear", weights, stored, 1000), (2000 + 1000 * weights) / (4000 + 8000 * 1000))
    assert math.isclose(rule.expected("linear", weights, stored), min(at_1, at_100))  # the worst size
    assert rule.span("conv", weights, stored) == (min(at_1, at_100), max(at_1, at_100))
    middle = rule.expected("linear", weights, stored, 10)  # interpolated in log n: rate 5 ns per slot
    assert math.isclose(middle, (2000 + 10 * weights) / (4000 + 10 * stored * 5.0))
    two = calib.Calibration({}, 2.0, 4.0, {f: (calib.Point(100, 1, 1.0, 2.0), calib.Point(10000, 1, 3.0, 2.0))
                                           for f in calib.FAMILIES})  # fmt: skip
    # a layer of 1000 weights lies halfway (log scale) between the two calibrated layers: dense rate 2 ns
    assert math.isclose(two.expected("linear", 1000, 100, 1), (2000 + 1000 * 2.0) / (4000 + 100 * 2.0))
    assert math.isclose(two.expected("linear", 10**6, 100, 1), (2000 + 10**6 * 3.0) / (4000 + 100 * 2.0))


def pruned_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512)).eval()
    prune = pytorch_pruning.Prune(model, 0, 0, 1, {"0.weight": 0.9375, "2.weight": 0.75})
    prune.prune()
    return model, prune


def test_the_default_rule_follows_the_machine():
    model, prune = pruned_mlp()
    slow = calib.Calibration({}, 1.0, 1.0, {f: (calib.Point(1000, 1, 1.0, 40.0),) for f in calib.FAMILIES})
    with calib.use_calibration(slow):  # a machine where the kernel is 40x slower per slot: nothing pays
        report = to_bank_sparse(copy.deepcopy(model), prune.state_dict())
    assert report.converted == [] and "too little sparsity for this machine" in report.layers[0].reason
    with calib.use_calibration(FIXED_RULE):  # 4 ns per slot: 93.75 % pays (4x), 75 % does not (1x)
        report = to_bank_sparse(copy.deepcopy(model), prune.state_dict())
    assert report.converted == ["0"] and "modelled 1.00x" in report.layers[1].reason
    assert math.isclose(report.layers[0].expected_speedup, FIXED_RULE.expected("linear", 512 * 512, 512 * 32))
    assert report.layers[0].expected_span is not None and "4.0x (" in str(report)
    with pytest.raises(TypeError, match="value=dict"):
        with calib.use_calibration({}):
            pass


def test_with_example_inputs_the_expected_speedup_is_at_their_size():
    model, prune = pruned_mlp()
    x = torch.randn(5, 7, 512)  # 35 rows
    with calib.use_calibration(FIXED_RULE):
        report = to_bank_sparse(copy.deepcopy(model), prune.state_dict(), example_inputs=x, min_speedup=0.01)
    first = report.layers[0]
    assert first.measured_speedup is not None
    assert math.isclose(first.expected_speedup, FIXED_RULE.expected("linear", first.weights, first.stored, 35))
