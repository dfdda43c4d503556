"""The calibrated rule: this machine's dense and bank-sparse speeds, the cost model, the cache file
(keyed, untrusted), and to_bank_sparse's decisions and report from it."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os

import pytest
import torch
from torch import nn

import pruning_tools
from pruning_tools import _native, pytorch_pruning
from pruning_tools.inference import calibration as calib
from pruning_tools.inference import convert, to_bank_sparse

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
        (w, n) for w in (256**2, 640 * 2560) for n in (1, 8, 64, 256)
    ]
    assert [(p.weights, p.n) for p in result.points["conv1x1"]] == [
        (w, s * s) for w in (512 * 128, 1024 * 256) for s in (7, 14, 28)
    ]
    assert result.attention_call_us >= 0 and result.attention_ns_per_mac > 0 and result.load >= 0
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
        lambda d: json.dumps({**d, "attention_ns_per_mac": -0.5}),
        lambda d: json.dumps({k: v for k, v in d.items() if k != "load"}),
    ],
    ids=[
        "garbage",
        "version",
        "negative",
        "missing field",
        "no points",
        "another key",
        "infinite",
        "attention",
        "no load",
    ],
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


def test_measured_while_busy_is_measured_again_once_quieter(monkeypatch):
    calls: list = []
    cores = os.cpu_count() or 1

    def busy_measure(k=None, rounds=5):
        calls.append(k)
        return dataclasses.replace(fake_measure([])(k), load=4.0 * cores)  # the cores were taken

    monkeypatch.setattr(calib, "measure", busy_measure)
    monkeypatch.setattr(calib, "_load", lambda: 3.0 * cores)
    first = calib.calibration()
    assert first.load == 4.0 * cores and calib.Calibration.from_json(first.to_json()) == first
    calib.reset()
    assert calib.calibration() == first and len(calls) == 1  # still busy: the cached one is kept
    monkeypatch.setattr(calib, "_load", lambda: 0.5)
    calib.reset()
    calib.calibration()
    assert len(calls) == 2  # quieter now: measured again
    quiet = dataclasses.replace(first, load=0.5)
    calib.path_of(calib.key()).write_text(quiet.to_json())
    calib.reset()
    assert calib.calibration() == quiet and len(calls) == 2  # measured quiet: kept


def test_attention_products_count_on_both_sides():
    rule = dataclasses.replace(FIXED_RULE, attention_call_us=2.0, attention_ns_per_mac=0.5)
    attention = nn.MultiheadAttention(64, 4, batch_first=True)
    x = torch.randn(3, 10, 64)
    macs = 2 * 3 * 10 * 10 * 64
    assert convert.attention_macs(attention, (x, x, x), {}) == macs
    assert convert.attention_macs(nn.MultiheadAttention(64, 4), (x.transpose(0, 1),) * 3, {}) == macs  # [L, N, E]
    assert convert.attention_macs(attention, (x[0], x[0, :7]), {}) == 2 * 10 * 7 * 64  # unbatched, 7 keys
    assert convert.attention_macs(nn.Linear(64, 64), (x,), {}) == 0
    layer = convert.LayerReport("a", "MultiheadAttention", True, "", weights=4 * 64 * 64, stored=4 * 64 * 4)
    shared = 2000 + macs * 0.5
    assert math.isclose(
        convert.expected_at_input(rule, attention, layer, (x, x, x), {}, 30),
        rule.expected("linear", layer.weights, layer.stored, 30, shared),
    )
    dense = 1000 + 30 * layer.weights * 1.0 + shared
    sparse = 1000 + 30 * layer.stored * 4.0 + shared
    assert math.isclose(rule.expected("linear", layer.weights, layer.stored, 30, shared), dense / sparse)
    assert dense / sparse < rule.expected("linear", layer.weights, layer.stored, 30)  # attention dilutes the gain


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


def test_key_names_the_kernel_loaded_not_the_file_on_disk(monkeypatch, tmp_path):
    """A source edited, or the package upgraded, under a running process: the key stays that of the kernel
    that runs (a calibration keyed to the file would be measured with one kernel and reused with another)."""
    if _native.library("bank_sparse") is None:
        pytest.skip("the C kernel is unavailable here")
    kernel = _native.KERNELS["bank_sparse"]
    before = calib.key()
    assert before["kernel"] == _native.loaded_digest("bank_sparse") == _native.source_digest(kernel.source)
    edited = tmp_path / "bank_sparse.c"
    edited.write_text(kernel.source.read_text() + "\n/* edited */\n")
    monkeypatch.setitem(_native.KERNELS, "bank_sparse", dataclasses.replace(kernel, source=edited))
    assert _native.source_digest(edited) != before["kernel"]
    assert calib.key() == before
