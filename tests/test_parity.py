"""One parity suite for both frameworks.

Every case builds the same layers in PyTorch and in MXNet (Gluon), loads identical weights and
runs the same schedule while the weights drift between steps like training would. Per framework:
the final masks match the core mask functions and the bank budgets. Across frameworks: masks,
weights and pruner state are bit-identical at every step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn as tnn

from pruning_tools import geometry as G
from pruning_tools import masks as M
from pruning_tools import pytorch_pruning

mx = pytest.importorskip("mxnet")
pytestmark = pytest.mark.mxnet
from mxnet.gluon import nn as gnn  # noqa: E402

from pruning_tools import mxnet_pruning  # noqa: E402

FRAMEWORKS = ("pytorch", "mxnet")


# ---------------------------------------------------------------- the same layers in both frameworks


@dataclass(frozen=True)
class Layer:
    kind: str  # "dense", "conv1d", "conv2d", "conv3d", "convT1d", "convT2d", "convT3d"
    cin: int
    cout: int
    kernel: int = 1
    groups: int = 1


def torch_layer(layer: Layer) -> tnn.Module:
    if layer.kind == "dense":
        return tnn.Linear(layer.cin, layer.cout)
    conv = {
        "conv1d": tnn.Conv1d,
        "conv2d": tnn.Conv2d,
        "conv3d": tnn.Conv3d,
        "convT1d": tnn.ConvTranspose1d,
        "convT2d": tnn.ConvTranspose2d,
        "convT3d": tnn.ConvTranspose3d,
    }
    return conv[layer.kind](layer.cin, layer.cout, layer.kernel, groups=layer.groups)


def gluon_layer(layer: Layer):
    if layer.kind == "dense":
        return gnn.Dense(layer.cout, in_units=layer.cin)
    conv = {
        "conv1d": gnn.Conv1D,
        "conv2d": gnn.Conv2D,
        "conv3d": gnn.Conv3D,
        "convT1d": gnn.Conv1DTranspose,
        "convT2d": gnn.Conv2DTranspose,
        "convT3d": gnn.Conv3DTranspose,
    }
    return conv[layer.kind](layer.cout, layer.kernel, in_channels=layer.cin, groups=layer.groups)


class TorchBackend:
    """Model, weights and pruner in PyTorch; names like ``0.weight``."""

    def __init__(self, layers, dtype):
        self.model = tnn.Sequential(*[torch_layer(layer) for layer in layers]).to(dtype)
        self.bridge = pytorch_pruning.TorchBridge(self.model)  # the pruner's own view of the model

    def names(self):
        return self.bridge.names()

    def get(self):
        return {n: self.bridge.read(n).detach().numpy().copy() for n in self.names()}

    def set(self, values):
        for n in self.names():
            self.bridge.write(n, torch.from_numpy(values[n]))

    def pruner(self, *args, **kwargs):
        return pytorch_pruning.Prune(self.model, *args, **kwargs)

    @staticmethod
    def masks(prune):
        return {n: m.numpy() for n, m in prune.masks().items()}


class MxnetBackend:
    """Model, weights and pruner in Gluon; names like ``net_dense0_weight``."""

    def __init__(self, layers, dtype):
        self.model = gnn.HybridSequential(prefix="net_")
        with self.model.name_scope():
            for layer in layers:
                self.model.add(gluon_layer(layer))
        self.model.initialize()
        if dtype == torch.float16:
            self.model.cast("float16")
        self.bridge = mxnet_pruning.MxnetBridge(self.model)  # the pruner's own view of the model

    def names(self):
        return self.bridge.names()

    def get(self):
        return {n: self.bridge.read(n).numpy() for n in self.names()}

    def set(self, values):
        for n in self.names():
            self.bridge.write(n, torch.from_numpy(values[n]))

    def pruner(self, *args, **kwargs):
        return mxnet_pruning.Prune(self.model, *args, **kwargs)

    @staticmethod
    def masks(prune):
        return {n: m.numpy() for n, m in prune.masks().items()}


BACKENDS = {"pytorch": TorchBackend, "mxnet": MxnetBackend}


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    layers: tuple
    prune_dict: dict  # keys: "w<i>" / "b<i>" = weight / bias of layer i, or a glob
    kwargs: dict = field(default_factory=dict)
    schedule: tuple = (2, 6, 2)  # pretrain_step, sparse_step, frequency
    dtype: torch.dtype = torch.float32
    zeros: float = 0.0  # fraction of weights zeroed before the pruner starts
    ties: bool = False  # round weights to a few values: many equal magnitudes


CASES = [
    Case("dense_tail_bank", (Layer("dense", 100, 24),), {"*weight": 0.9}),
    Case("dense_2of4", (Layer("dense", 64, 16),), {"*weight": 0.5}, {"bank_size": 4}, (0, 0, 1)),
    Case("dense_2of4_ties", (Layer("dense", 64, 16),), {"*weight": 0.5}, {"bank_size": 4}, ties=True),
    Case("conv1d", (Layer("conv1d", 48, 16, 5),), {"*weight": 0.75}, {"bank_size": 16}),
    Case("conv2d_channels_last", (Layer("conv2d", 40, 12, 3),), {"*weight": 0.8}, {"bank_size": 16}),
    Case("conv2d_flat", (Layer("conv2d", 24, 16, 3),), {"*weight": 0.8}, {"bank_size": 16, "layout": "flat"}),
    Case("conv3d", (Layer("conv3d", 8, 6, 3),), {"*weight": 0.75}, {"bank_size": 8}),
    Case("grouped_conv2d", (Layer("conv2d", 32, 16, 3, groups=4),), {"*weight": 0.75}, {"bank_size": 4}),
    Case(
        "depthwise_conv2d",
        (Layer("conv2d", 16, 16, 3, groups=16),),
        {"*weight": 0.5},
        {"bank_size": 4, "layout": "flat"},
    ),
    Case("conv_transpose2d", (Layer("convT2d", 16, 24, 3),), {"*weight": 0.75}, {"bank_size": 8}),
    Case(
        "grouped_conv_transpose2d",
        (Layer("convT2d", 16, 8, 3, groups=2),),
        {"*weight": 0.5},
        {"bank_size": 4, "layout": "flat"},
    ),
    Case(
        "conv_transpose1d_and_3d",
        (Layer("convT1d", 24, 8, 3), Layer("convT3d", 8, 12, 2)),
        {"*weight": 0.75},
        {"bank_size": 8},
    ),
    Case(
        "per_layer_overrides",
        (Layer("conv2d", 32, 16, 3), Layer("dense", 96, 10)),
        {"w0": {"sparsity": 0.875, "bank_size": 8}, "w1": {"sparsity": 0.6, "balance": "none"}, "b1": 0.5},
    ),
    Case(
        "unstructured_with_biases", (Layer("conv2d", 8, 8, 3), Layer("dense", 50, 10)), {"*": 0.8}, {"balance": "none"}
    ),
    Case("global", (Layer("conv2d", 16, 8, 3), Layer("dense", 72, 10)), {"*weight": 0.85}, {"balance": "global"}),
    Case(
        "global_ties",
        (Layer("dense", 40, 20), Layer("dense", 20, 10)),
        {"*weight": 0.7},
        {"balance": "global"},
        ties=True,
    ),
    Case(
        "mixed_global_and_fix",
        (Layer("dense", 64, 8), Layer("dense", 8, 32), Layer("conv2d", 32, 8, 1)),
        {
            "w0": {"sparsity": 0.8, "balance": "global"},
            "w1": {"sparsity": 0.6, "balance": "global"},
            "w2": {"sparsity": 0.75, "bank_size": 8},
        },
    ),
    Case(
        "global_restore_sparsity",
        (Layer("dense", 64, 8), Layer("dense", 32, 8)),
        {"*weight": 0.9},
        {"balance": "global", "restore_sparsity": True},
        zeros=0.3,
    ),
    Case("restore_sparsity", (Layer("dense", 128, 16),), {"*weight": 0.9}, {"restore_sparsity": True}, zeros=0.5),
    Case("fix_sparsity", (Layer("conv2d", 32, 8, 3),), {"*weight": 0.9}, {"fix_sparsity": True}, zeros=0.6),
    Case(
        "one_shot_prune_device_cpu",
        (Layer("dense", 192, 8),),
        {"*weight": 0.9375},
        {"prune_device": "cpu"},
        (3, 0, 100),
    ),
    Case("float16", (Layer("dense", 64, 12),), {"*weight": 0.75}, {"bank_size": 16}, dtype=torch.float16),
]


def initial_weights(case: Case, names: list[str], shapes: dict) -> dict:
    """Deterministic weights for ``names`` (in model order), with ties / existing zeros."""
    rng = np.random.default_rng(sum(map(ord, case.id)))
    np_dtype = np.float16 if case.dtype == torch.float16 else np.float32
    values = {}
    for name in names:
        w = rng.standard_normal(shapes[name])
        if case.ties:
            w = np.round(w * 2) / 2
        if case.zeros:
            w[rng.random(w.shape) < case.zeros] = 0.0
        values[name] = w.astype(np_dtype)
    return values


def drift(values: dict, step: int) -> dict:
    """The next step's weights: the same small update for both frameworks (like an optimizer step)."""
    rng = np.random.default_rng(1000 + step)
    return {n: (w + (0.1 * rng.standard_normal(w.shape)).astype(w.dtype)).astype(w.dtype) for n, w in values.items()}


def resolve_keys(prune_dict: dict, names: list[str]) -> dict:
    """``w<i>``/``b<i>`` -> this framework's name of layer i's weight/bias; globs stay."""
    out = {}
    for key, value in prune_dict.items():
        if key[0] in "wb" and key[1:].isdigit():
            key = names[2 * int(key[1:]) + (key[0] == "b")]
        out[key] = value
    return out


def run(framework: str, case: Case, steps: int):
    """Yield ``(step, masks, weights)`` after every ``prune()`` of one framework; final pruner last."""
    backend = BACKENDS[framework](case.layers, case.dtype)
    names = backend.names()
    shapes = {n: w.shape for n, w in backend.get().items()}
    values = initial_weights(case, names, shapes)
    backend.set(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune = backend.pruner(*case.schedule, resolve_keys(case.prune_dict, names), **case.kwargs)
    prune.prepare()
    trace = []
    for step in range(1, steps + 1):
        backend.set(drift(backend.get(), step))
        prune.prune()
        trace.append((backend.masks(prune), backend.get()))
    return names, prune, trace


def steps_of(case: Case) -> int:
    pretrain, sparse, _ = case.schedule
    return pretrain + max(sparse, 1) + 2  # past the last refresh


# ---------------------------------------------------------------- per framework


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_final_masks_follow_the_rules(framework, case):
    names, prune, trace = run(framework, case, steps_of(case))
    masks, weights = trace[-1]
    # fix_sparsity keeps arbitrary existing zeros: they need not fit bank budgets
    assert prune.check()[1] or case.kwargs.get("fix_sparsity")
    layers, total = prune.sparsity()
    for name, spec in prune.config.params.items():
        w = torch.from_numpy(weights[name])
        keep = torch.from_numpy(masks[name])
        assert not bool((w[~keep] != 0).any()), f"{name}: a pruned weight is alive"
        if case.kwargs.get("fix_sparsity"):
            assert layers[name] == pytest.approx(float((w == 0).float().mean()))
            continue
        if spec.balance == "fix":
            budget = G.bank_budget(G.row_length(w.shape, spec.layout, spec.out_dim), spec.bank_size, spec.sparsity)
            full, tail = M.bank_nonzeros(keep, spec.bank_size, spec.layout, spec.out_dim)
            assert bool((full == budget.keep).all()), f"{name}: a full bank misses its budget {budget.keep}"
            if tail is not None:
                assert bool((tail == budget.tail_keep).all())
        elif spec.balance == "none":
            assert int(keep.sum()) == G.keep_count(w.numel(), spec.sparsity)
    if case.kwargs.get("balance") == "global":
        n = sum(torch.from_numpy(masks[name]).numel() for name in prune.config.params)
        kept = sum(int(torch.from_numpy(masks[name]).sum()) for name in prune.config.params)
        assert kept == G.keep_count(n, case.prune_dict["*weight"])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_one_shot_masks_equal_the_core_functions(framework):
    case = Case(
        "core",
        (Layer("conv2d", 40, 12, 3), Layer("convT2d", 12, 24, 3)),
        {"*weight": 0.9},
        {"bank_size": 16},
        (0, 0, 1),
    )
    backend = BACKENDS[framework](case.layers, case.dtype)
    names = backend.names()
    values = initial_weights(case, names, {n: w.shape for n, w in backend.get().items()})
    backend.set(values)
    prune = backend.pruner(*case.schedule, case.prune_dict, **case.kwargs)
    prune.prepare().prune()
    got = backend.masks(prune)
    for name, out_dim in ((names[0], 0), (names[2], 1)):
        expected = M.bank_mask(torch.from_numpy(values[name]), None, 0.9, 16, "channels_last", out_dim)
        assert np.array_equal(got[name], expected.numpy()), name


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_state_dict_resumes_bit_identically(framework, tmp_path):
    case = CASES[0]
    names, prune, trace = run(framework, case, 5)  # mid-ramp
    state = prune.state_dict()
    backend = BACKENDS[framework](case.layers, case.dtype)
    backend.set(trace[-1][1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = backend.pruner(*case.schedule, resolve_keys(case.prune_dict, names), **case.kwargs)
    resumed.prepare().load_state_dict(state)
    assert resumed.step == 5
    for mask_a, mask_b in zip(backend.masks(prune).values(), backend.masks(resumed).values()):
        assert np.array_equal(mask_a, mask_b)


# ---------------------------------------------------------------- across frameworks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_way_to_apply_a_mask_clears_nan_and_negative_zero_in_both(dtype):
    """Pruned weights become exactly +0.0 in both frameworks (a NaN or -0.0 there too); kept ones keep
    their bits, a kept -0.0 included."""
    layer = (Layer("dense", 8, 2),)
    values = torch.tensor(
        [[float("nan"), -0.0, -1.5, 2.0, float("-inf"), 0.25, -0.0, float("nan")], [1.0] * 8], dtype=dtype
    )
    keep = torch.tensor([[False, False, False, True, False, True, True, True], [True, False] * 4])
    out = {}
    for framework in FRAMEWORKS:
        backend = BACKENDS[framework](layer, dtype)
        name = backend.names()[0]  # the weight [2, 8]
        backend.bridge.write(name, values)
        backend.bridge.apply_mask(name, keep)
        out[framework] = backend.bridge.read(name).detach().clone()
    bits = {f: w.view(torch.int16) for f, w in out.items()} if dtype == torch.float16 else None
    for w in out.values():
        assert torch.equal(w[~keep], torch.zeros(int((~keep).sum()), dtype=dtype))
        assert not bool(torch.signbit(w[~keep]).any())  # +0.0, never -0.0
        assert bool(torch.signbit(w[0, 6]))  # a kept -0.0 stays
        assert bool(torch.isnan(w[0, 7]))  # a kept NaN stays (the user's problem, not ours to hide)
    if bits is not None:
        assert torch.equal(bits["pytorch"], bits["mxnet"])
    else:
        assert torch.equal(out["pytorch"].view(torch.int32), out["mxnet"].view(torch.int32))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_identical_masks_weights_and_state_at_every_step(case):
    steps = steps_of(case)
    torch_names, torch_prune, torch_trace = run("pytorch", case, steps)
    mx_names, mx_prune, mx_trace = run("mxnet", case, steps)
    pairs = list(zip(torch_names, mx_names))
    assert list(torch_prune.config.params) == [t for t, m in pairs if m in mx_prune.config.params]
    for step, ((tm, tw), (mm, mw)) in enumerate(zip(torch_trace, mx_trace), start=1):
        for t, m in pairs:
            assert np.array_equal(tw[t], mw[m]), f"step {step}: weights of {t} / {m} differ"
            if t in tm:
                assert np.array_equal(tm[t], mm[m]), f"step {step}: masks of {t} / {m} differ"
    torch_state, mx_state = torch_prune.state_dict(), mx_prune.state_dict()
    rename = dict(pairs)
    assert torch_state["step"] == mx_state["step"]
    for t in torch_prune.config.params:
        assert torch_state["mask_targets"][t] == mx_state["mask_targets"][rename[t]]
        assert torch_state["initial_sparsity"][t] == mx_state["initial_sparsity"][rename[t]]
        if t in torch_state["masks"]:
            assert np.array_equal(torch_state["masks"][t].numpy(), mx_state["masks"][rename[t]])
    assert torch_prune.sparsity()[1] == mx_prune.sparsity()[1]
    assert torch_prune.check() == (
        {t: ok for (t, m), ok in zip(pairs, [mx_prune.check()[0].get(m) for _, m in pairs]) if ok is not None},
        mx_prune.check()[1],
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["dense", "conv1d", "conv2d", "convT2d"]),
    cin=st.integers(1, 40),
    cout=st.integers(1, 12),
    kernel=st.integers(1, 3),
    bank_size=st.integers(2, 70),
    sparsity=st.floats(0.0, 0.97),
    balance=st.sampled_from(["fix", "none", "global"]),
    layout=st.sampled_from(["channels_last", "flat"]),
    ties=st.booleans(),
    schedule=st.sampled_from([(0, 0, 1), (1, 5, 2), (0, 7, 3)]),
)
def test_random_shapes_and_settings_give_identical_masks(
    kind, cin, cout, kernel, bank_size, sparsity, balance, layout, ties, schedule
):
    case = Case(
        "random",
        (Layer(kind, cin, cout, kernel if kind != "dense" else 1),),
        {"*weight": sparsity},
        {"bank_size": bank_size, "balance": balance, "layout": layout},
        schedule,
        ties=ties,
    )
    steps = steps_of(case)
    _, _, torch_trace = run("pytorch", case, steps)
    _, _, mx_trace = run("mxnet", case, steps)
    for step, ((tm, _), (mm, _)) in enumerate(zip(torch_trace, mx_trace), start=1):
        (t_mask,), (m_mask,) = tm.values(), mm.values()
        assert np.array_equal(t_mask, m_mask), f"step {step}"
