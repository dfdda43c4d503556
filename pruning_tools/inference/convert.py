"""Turn a pruned model into a faster one, in place: every layer whose weight is bank-balanced (and
that would be faster) is replaced by its bank-sparse version; the report says what happened to each.

- ``to_bank_sparse(model, pruner)``: from the model's own (pruned) weights, the geometry of each
  weight (bank size, layout, output dim, budget) from the pruner's spec (``pruner.pruned_specs``).
- ``load_bank_sparse(model, path)``: from a packed file (``pruning-tools export``) into an unpruned
  instance of the architecture, no training code needed.

Convertible: ``nn.Linear``; ``nn.Conv1d`` / ``nn.Conv2d`` (any kernel, stride, padding, dilation;
groups 1) and 1×1 ``nn.Conv3d``; the projections of ``nn.MultiheadAttention`` (so
``nn.TransformerEncoder`` / ``Decoder`` work); transformers' ``Conv1D`` (weight ``[in, out]``, its spec's
``out_dim=1``). A layer stays dense, with the reason in the report, when it is not pruned
bank-balanced, too small, too little sparse, or (with ``example_inputs``) measured no faster.

The rule. Without ``example_inputs`` it is a model of the user's machine, measured there: a layer
converts when it holds at least ``MIN_WEIGHTS`` weights and its modelled speedup reaches
``min_speedup`` at *every* input size the calibration timed (``calibration``: this machine's dense and
bank-sparse speed per layer family and input size, measured at first use in about half a second
and cached; ``pruning_tools.calibrate()`` measures again). The report's "expected" is that worst case,
with the span over input sizes beside it. With ``example_inputs`` each candidate layer is timed, dense
against bank-sparse, on the input it receives in one forward pass of the model, and converts only when
measured at least ``min_speedup`` faster (its "expected" is then the model's at that input's size);
then the whole model is timed before and after, and every conversion is undone should it be slower
as a whole.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..config import ParamSpec
from ..export import NotBankBalancedError, PackedTensor, read_packed, unpack, worth_packing
from ..geometry import BankGeometry
from ..layer_kinds import is_transposed_linear
from . import calibration as calib
from .attention import BankSparseMultiheadAttention, attention_unsupported, disable_fused_path, restore
from .fold import conv_bn_pairs, fold, traced
from .hf_saving import refuse_save_pretrained
from .modules import BankSparseConv, BankSparseLinear, _BankSparse, _pack, conv_unsupported, module_tensor
from .pool import pool_channels_last
from .relu import conv_relu_pairs, fuse_relu

MIN_WEIGHTS = 16384  # below: the ~5 µs of a call rivals the dense product
MIN_SPEEDUP = 1.2


# ---------------------------------------------------------------- the report


@dataclass
class LayerReport:
    """What happened to one layer."""

    name: str
    kind: str  # "Linear", "Conv2d 3x3", "MultiheadAttention", ...
    converted: bool
    reason: str  # why it stayed dense, or what it became
    weights: int = 0  # dense weights of the layer's bank-sparse candidates
    stored: int = 0  # packed slots (kept weights, and padding of banks holding fewer)
    # modelled from the calibration: worst input size (attention: its projections only), or example_inputs'
    expected_speedup: float | None = None
    expected_span: tuple[float, float] | None = None  # modelled, smallest and largest over the calibrated sizes
    measured_speedup: float | None = None  # timed dense / bank-sparse on the layer's input (example_inputs)


@dataclass
class ConversionReport:
    """Per layer: converted or kept dense, and why; expected and measured speedups."""

    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measured_speedup: float | None = None  # whole model, dense / converted (example_inputs)

    @property
    def converted(self) -> list[str]:
        """Names of the replaced modules, in model order."""
        return [layer.name for layer in self.layers if layer.converted]

    @property
    def dense(self) -> list[str]:
        """Names of the candidate layers kept dense."""
        return [layer.name for layer in self.layers if not layer.converted]

    def __str__(self) -> str:
        if not self.layers:
            return (
                "to_bank_sparse: no convertible layer (Linear, Conv1d/2d, MultiheadAttention, Conv1D); nothing changed"
            )
        rows = [("layer", "kind", "result", "weights", "kept", "expected", "measured", "why")]
        for layer in self.layers:
            kept = f"{layer.stored / layer.weights:.2%}" if layer.weights else "-"
            rows.append(
                (
                    layer.name or "(model)",
                    layer.kind,
                    "bank-sparse" if layer.converted else "dense",
                    str(layer.weights),
                    kept,
                    _expected(layer),
                    "-" if layer.measured_speedup is None else f"{layer.measured_speedup:.2f}x",
                    layer.reason,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
        total = f"{len(self.converted)} of {len(self.layers)} layers converted"
        if self.measured_speedup is not None:
            total += f"; whole model measured {self.measured_speedup:.2f}x faster than dense"
        return "\n".join([*lines, total, *self.notes])


def _expected(layer: LayerReport) -> str:
    if layer.expected_speedup is None:
        return "-"
    text = f"{layer.expected_speedup:.1f}x"
    if layer.expected_span is not None:
        text += f" ({layer.expected_span[0]:.1f}-{layer.expected_span[1]:.1f})"
    return text


# ---------------------------------------------------------------- candidates


@dataclass
class _Candidate:
    """A module that could be replaced, and its weights by parameter name (relative to the module)."""

    name: str
    module: nn.Module
    kind: str
    family: str  # "linear", "conv" or "conv1x1": which calibrated family models it
    weights: dict[str, Tensor]  # e.g. {"weight": ...} or {"in_proj_weight": ..., "out_proj.weight": ...}
    why_not: str | None = None  # structurally unsupported


def _kind(module: nn.Module) -> str:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return f"{type(module).__name__} {'x'.join(map(str, module.kernel_size))}"
    return type(module).__name__


def _candidates(model: nn.Module) -> list[_Candidate]:
    found: list[_Candidate] = []
    skip: list[str] = []  # subtrees handled as one unit (attention) or already converted
    for name, module in model.named_modules():
        if any(s == "" or name == s or name.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, (_BankSparse, BankSparseMultiheadAttention)):
            skip.append(name)
            continue
        if isinstance(module, nn.MultiheadAttention):
            skip.append(name)
            weights = {"out_proj.weight": module.out_proj.weight}
            if module._qkv_same_embed_dim:
                weights["in_proj_weight"] = module.in_proj_weight
            else:
                weights.update({f"{p}_weight": getattr(module, f"{p}_weight") for p in ("q_proj", "k_proj", "v_proj")})
            found.append(
                _Candidate(name, module, "MultiheadAttention", "linear", weights, attention_unsupported(module))
            )
        elif isinstance(module, nn.Linear) or is_transposed_linear(module):
            found.append(_Candidate(name, module, _kind(module), "linear", {"weight": module.weight}))
        elif isinstance(module, nn.modules.conv._ConvNd):
            found.append(
                _Candidate(
                    name, module, _kind(module), family_of(module), {"weight": module.weight}, conv_unsupported(module)
                )
            )
    for c in found:
        if not c.name and c.why_not is None:
            c.why_not = "the model itself: conversion replaces child modules (wrap it, e.g. in nn.Sequential)"
    return found


def family_of(module: nn.Module) -> str:
    """The calibrated family that models ``module``: ``"conv1x1"``, ``"conv"`` or ``"linear"``."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv1x1" if all(k == 1 for k in module.kernel_size) else "conv"
    return "linear"


def attention_macs(module: nn.Module, args: tuple, kwargs: dict) -> int:
    """Multiply-adds of the attention products (Q·Kᵀ and weights·V: ``2·N·L·S·E``) of a call of
    ``nn.MultiheadAttention`` ``module`` with these arguments; 0 for any other module."""
    if not isinstance(module, nn.MultiheadAttention):
        return 0
    query = args[0] if args else kwargs.get("query")
    key = args[1] if len(args) > 1 else kwargs.get("key")
    if not isinstance(query, Tensor) or not isinstance(key, Tensor) or query.dim() not in (2, 3):
        return 0
    if query.dim() == 2:  # unbatched [L, E]
        sequences, length, source = 1, query.shape[0], key.shape[0]
    elif module.batch_first:  # [N, L, E]
        sequences, length, source = query.shape[0], query.shape[1], key.shape[1]
    else:  # [L, N, E]
        sequences, length, source = query.shape[1], query.shape[0], key.shape[0]
    return 2 * sequences * length * source * module.embed_dim


def modelled_at_input(
    rule: calib.Calibration, module: nn.Module, layer: LayerReport, args: tuple, kwargs: dict, n: int
) -> tuple[float, float]:
    """The calibration's (dense, bank-sparse) ns per call for ``layer`` (its weights and packed slots)
    replacing ``module`` on this input of ``n`` rows / output positions, attention products counted on
    both sides."""
    shared = rule.attention_ns(attention_macs(module, args, kwargs))
    return rule.times(family_of(module), layer.weights, max(1, layer.stored), n, shared)


def expected_at_input(
    rule: calib.Calibration, module: nn.Module, layer: LayerReport, args: tuple, kwargs: dict, n: int
) -> float:
    """The calibration's speedup (``modelled_at_input``'s dense ÷ bank-sparse time)."""
    dense, sparse = modelled_at_input(rule, module, layer, args, kwargs, n)
    return dense / sparse


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ---------------------------------------------------------------- building the replacements


def _replacement(c: _Candidate, packed: dict[str, PackedTensor]) -> nn.Module:
    """The bank-sparse module for candidate ``c`` given its packed weights (all or, for attention, some)."""
    m = c.module
    if isinstance(m, nn.MultiheadAttention):
        e = m.embed_dim
        bias = m.in_proj_bias
        projections: dict[str, nn.Module] = {}
        if "out_proj.weight" in packed:
            projections["out_proj"] = BankSparseLinear(packed["out_proj.weight"], m.out_proj.bias)
        if "in_proj_weight" in packed:
            projections["in_proj"] = BankSparseLinear(packed["in_proj_weight"], bias)
        for i, p in enumerate(("q_proj", "k_proj", "v_proj")):
            if f"{p}_weight" in packed:
                part = None if bias is None else bias[i * e : (i + 1) * e]
                projections[p] = BankSparseLinear(packed[f"{p}_weight"], part)
        new: nn.Module = BankSparseMultiheadAttention.from_module(m, projections)
    elif isinstance(m, nn.modules.conv._ConvNd):
        new = BankSparseConv(packed["weight"], m.bias, m.stride, m.padding, m.dilation, m.padding_mode)
    else:
        new = BankSparseLinear(packed["weight"], module_tensor(m, "bias"))
    device = next(iter(c.weights.values())).device
    return new.to(device).train(m.training)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# ---------------------------------------------------------------- timing (the measured rule)


def _median_ratio(dense: Callable[[], object], sparse: Callable[[], object], budget_s: float) -> float:
    """Median over interleaved rounds of (dense time / bank-sparse time), within about ``budget_s``."""
    dense(), sparse()  # warm-up: kernels built, caches filled
    ratios: list[float] = []
    started = time.perf_counter()
    while len(ratios) < 3 or (len(ratios) < 15 and time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        dense()
        t1 = time.perf_counter()
        sparse()
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / max(t2 - t1, 1e-9))
    return statistics.median(ratios)


def _bound(module: nn.Module, args: tuple, kwargs: dict) -> Callable[[], object]:
    return lambda: module(*args, **kwargs)


def _record_inputs(model: nn.Module, modules: Sequence[nn.Module], example_inputs: Any) -> dict[int, tuple]:
    """``id(module) -> (args, kwargs, n)`` of the first call of each of ``modules`` in one forward pass;
    ``n``: the rows of its input (linear layers, attention) or its output positions (convolutions)."""
    seen: dict[int, tuple] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.setdefault(id(module), (args, kwargs))

    def size(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if id(module) in seen and len(seen[id(module)]) == 2:
            out = output[0] if isinstance(output, tuple) else output
            channels = out.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else out.shape[-1]
            seen[id(module)] = (*seen[id(module)], max(1, out.numel() // max(1, channels)))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    handles += [m.register_forward_hook(size, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _call(model: nn.Module, example_inputs: Any) -> object:
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, tuple):
        return model(*example_inputs)
    return model(example_inputs)


# ---------------------------------------------------------------- the conversion


def _spec_source(pruner: Any, model: nn.Module) -> dict[str, ParamSpec] | None:
    """The pruner's specs, checked against ``model``: every name a parameter of it, same shape; a
    ``Prune`` must hold the model's own parameters."""
    if pruner is None:
        return None
    from ..pruner import Pruner, pruned_specs

    if not isinstance(pruner, (Pruner, Mapping, str, Path)):
        raise TypeError(
            f"pruner={type(pruner).__name__} is not allowed: expected a Prune, its state_dict(), "
            "a saved state file or None"
        )
    specs = pruned_specs(pruner)
    params = dict(model.named_parameters())
    for name, spec in specs.items():
        if name not in params:
            raise ValueError(
                f"pruner does not belong to this model: it prunes {name!r}, which is not a parameter of the model "
                f"(parameters: {sorted(params)[:5]}...)"
            )
        if spec.shape and tuple(spec.shape) != tuple(params[name].shape):
            raise ValueError(
                f"pruner does not belong to this model: {name!r} has shape {list(spec.shape)} in the pruner and "
                f"{list(params[name].shape)} in the model"
            )
        if isinstance(pruner, Pruner) and pruner.weight(name) is not params[name]:
            raise ValueError(
                f"pruner does not belong to this model: its {name!r} is another tensor than the model's "
                "(to convert a copy of the pruned model, pass prune.state_dict())"
            )
    return specs


def _plan(
    c: _Candidate,
    layer: LayerReport,
    packed_of: Callable[[_Candidate, str, Tensor], PackedTensor | str],
    rule: calib.Calibration | None,
    by_rule: bool,
    min_speedup: float,
    min_weights: int,
) -> tuple[calib.Calibration | None, dict[str, PackedTensor]]:
    """Pack ``c``'s weights and keep those the calibrated rule (``by_rule``: no example inputs) expects
    to gain; fill ``layer``'s sizes, expectation and, when nothing is kept, its reason."""
    packed: dict[str, PackedTensor] = {}
    reasons = []
    for pname, w in c.weights.items():
        result = packed_of(c, pname, w)
        if isinstance(result, str):
            reasons.append(result if len(c.weights) == 1 else f"{pname}: {result}")
            continue
        stored = result.values.numel() + result.tail_values.numel()
        rule = rule or calib.calibration()
        expected = rule.expected(c.family, w.numel(), max(1, stored))
        label = f"{pname}: " if len(c.weights) > 1 else ""
        layer.weights += w.numel()
        layer.stored += stored
        if by_rule and w.numel() < min_weights:
            reasons.append(f"{label}too small ({w.numel()} < {min_weights} weights)")
        elif by_rule and expected < min_speedup:
            reasons.append(
                f"{label}too little sparsity for this machine (modelled {expected:.2f}x < {min_speedup}x "
                "at its worst calibrated input size)"
            )
        else:
            packed[pname] = result
    if layer.weights and rule is not None:
        layer.expected_speedup = rule.expected(c.family, layer.weights, max(1, layer.stored))
        layer.expected_span = rule.span(c.family, layer.weights, max(1, layer.stored))
    if not packed:
        layer.reason = "; ".join(reasons) or "nothing to convert"
    return rule, packed


def _decide(
    model: nn.Module,
    found: list[_Candidate],
    packed_of: Callable[[_Candidate, str, Tensor], PackedTensor | str],
    example_inputs: Any,
    min_speedup: float,
    min_weights: int,
) -> ConversionReport:
    """Which candidates convert (the calibrated rule, or timings on ``example_inputs``), then convert them."""
    if isinstance(min_speedup, bool) or not isinstance(min_speedup, (int, float)) or not min_speedup > 0:
        raise ValueError(f"min_speedup={min_speedup!r} is not allowed: expected a number > 0")
    if isinstance(min_weights, bool) or not isinstance(min_weights, int) or min_weights < 0:
        raise ValueError(f"min_weights={min_weights!r} is not allowed: expected an integer >= 0")
    report = ConversionReport()
    rule: calib.Calibration | None = None  # measured (or read) once a layer needs it
    chosen: dict[str, tuple[_Candidate, nn.Module]] = {}
    pending: list[tuple[_Candidate, LayerReport, dict[str, PackedTensor]]] = []
    for c in found:
        layer = LayerReport(c.name, c.kind, False, "")
        report.layers.append(layer)
        if c.why_not:
            layer.reason = c.why_not
            continue
        rule, packed = _plan(c, layer, packed_of, rule, example_inputs is None, min_speedup, min_weights)
        if packed:
            pending.append((c, layer, packed))
    inputs = (
        _record_inputs(model, [c.module for c, _, _ in pending], example_inputs) if example_inputs is not None else {}
    )
    for c, layer, packed in pending:
        new = _replacement(c, packed)
        parts = ", ".join(f"{p.bank_size}-banks keep {p.k}" for p in packed.values())
        if example_inputs is not None:
            if id(c.module) not in inputs:
                layer.reason = "not called by example_inputs: kept dense"
                continue
            args, kwargs, *n = inputs[id(c.module)]
            if n and rule is not None:
                layer.expected_speedup = expected_at_input(rule, c.module, layer, args, kwargs, n[0])
            with torch.no_grad():
                layer.measured_speedup = _median_ratio(_bound(c.module, args, kwargs), _bound(new, args, kwargs), 0.05)
            if layer.measured_speedup < min_speedup:
                layer.reason = f"measured {layer.measured_speedup:.2f}x < {min_speedup}x: kept dense"
                continue
        layer.converted = True
        layer.reason = parts
        chosen[c.name] = (c, new)

    if example_inputs is not None and chosen:
        report.measured_speedup = _whole_model(model, chosen, example_inputs)
        if report.measured_speedup < 1.0:
            for layer in report.layers:
                if layer.converted:
                    layer.converted, layer.reason = False, "the whole model was slower converted: undone"
            report.notes.append(f"the converted model measured {report.measured_speedup:.2f}x: every conversion undone")
            return report
    report.notes.extend(_install(model, chosen))
    if chosen and refuse_save_pretrained(model, list(chosen)):
        report.notes.append("save_pretrained refused on this model (from_pretrained cannot read bank-sparse layers): "
                            "use pruning-tools export + load_bank_sparse")  # fmt: skip
    changed = disable_fused_path(model, set(chosen))
    if changed:
        names = sorted({name for name, m in model.named_modules() for module, _, _ in changed if m is module})
        report.notes.append(f"PyTorch's fused transformer path turned off in {names} (it reads dense weights)")
    return report


def _install(model: nn.Module, chosen: dict[str, tuple[_Candidate, nn.Module]]) -> list[str]:
    """Put the converted modules of ``chosen`` in ``model``, fold each BatchNorm and fuse each ReLU that
    the model's graph allows after a converted convolution (``fold``, ``relu``), and, where a convolution
    is converted, pool channels-last (``pool``); the report's notes."""
    notes: list[str] = []
    convs = [name for name, (c, _) in chosen.items() if c.family != "linear"]
    graph, why = None, None
    if convs and any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in model.modules()):
        graph, why = traced(model)  # before any module changes: fx traces through leaf modules it knows
    modules = dict(model.named_modules())
    folded = conv_bn_pairs(graph, modules, convs) if graph is not None else []
    outputs = {conv: conv for conv in convs if isinstance(modules[conv], nn.Conv2d)}  # graph node -> its conv
    outputs.update({bn: conv for conv, bn in folded})
    fused = conv_relu_pairs(graph, modules, outputs) if graph is not None else []
    for name, (_, new) in chosen.items():
        _set(model, name, new)
    for conv_name, bn_name in folded:
        m = chosen[conv_name][0].module
        # conv_bn_pairs pairs only an nn.Conv2d (converted: a BankSparseConv) with the BatchNorm2d after it
        conv, bn = cast(BankSparseConv, chosen[conv_name][1]), cast(nn.BatchNorm2d, model.get_submodule(bn_name))
        new_conv, new_bn = fold(conv, bn, (m.stride, m.padding, m.dilation, m.padding_mode))
        _set(model, conv_name, new_conv)
        _set(model, bn_name, new_bn)
    fuse_relu(model, fused)
    pooled = pool_channels_last(model) if convs else 0
    if folded:
        notes.append(f"BatchNorm folded into the converted convolution before it in eval mode: {len(folded)} pairs")
    if fused:
        notes.append(f"ReLU applied in the epilogue of the converted convolution before it in eval mode: {len(fused)}")
    if why:
        notes.append(f"BatchNorm not folded, ReLU not fused: {why}")
    if pooled:
        notes.append(f"MaxPool2d computed channels-last on NCHW inputs in eval mode (same values): {pooled}")
    return notes


def _whole_model(model: nn.Module, chosen: dict[str, tuple[_Candidate, nn.Module]], example_inputs: Any) -> float:
    """Dense / converted time of the whole model, interleaved: the modules are swapped in and out (and
    PyTorch's fused transformer path allowed for the dense runs only). The model is left dense."""

    def with_modules(sparse: bool) -> Callable[[], object]:
        def run() -> object:
            for name, (c, new) in chosen.items():
                _set(model, name, new if sparse else c.module)
            changed = disable_fused_path(model, set(chosen)) if sparse else []
            try:
                return _call(model, example_inputs)
            finally:
                restore(changed)

        return run

    with torch.no_grad():
        try:
            return _median_ratio(with_modules(False), with_modules(True), 1.0)
        finally:
            for name, (c, _) in chosen.items():
                _set(model, name, c.module)


def to_bank_sparse(
    model: nn.Module,
    pruner: Any = None,
    *,
    bank_size: int = 64,
    example_inputs: Any = None,
    min_speedup: float = MIN_SPEEDUP,
    min_weights: int = MIN_WEIGHTS,
) -> ConversionReport:
    """Replace, in place, every layer of ``model`` whose weight is bank-balanced by its bank-sparse
    version, where that is faster (see the module docstring); return the ``ConversionReport``.

    ``pruner``: the ``Prune`` that pruned ``model``, its ``state_dict()`` or a saved state file: each
    weight's bank size, layout, output dim and budget come from its spec (weights it did not prune
    bank-balanced stay dense), and it must belong to the model (same names and shapes). Without it,
    ``bank_size`` applies to every weight and the budget is each weight's measured sparsity.
    ``example_inputs``: an input of ``model`` (a tensor, a tuple of positional arguments, or a dict of
    keyword arguments): the rule is then measured on it, and so is the whole model's speedup.
    ``min_speedup``, ``min_weights``: the rule's thresholds (``min_speedup=1e-9, min_weights=0``
    converts every bank-balanced layer). The converted model computes the masked model's outputs (up
    to float rounding).
    """
    specs = _spec_source(pruner, model)
    default = BankGeometry(bank_size)  # validated here, before any layer is looked at

    def packed_of(c: _Candidate, pname: str, w: Tensor) -> PackedTensor | str:
        full = _join(c.name, pname)
        out_dim = 1 if is_transposed_linear(c.module) else 0
        target: float | None = None  # None: the weight's measured sparsity is its budget
        if specs is not None:
            spec = specs.get(full)
            if spec is None:
                return "not pruned by the pruner"
            if spec.balance != "fix":
                return f"pruned unstructured (balance={spec.balance!r})"
            if spec.out_dim != out_dim:
                return f"spec out_dim={spec.out_dim}, expected {out_dim} for {c.kind} (pruner without Conv1D support?)"
            geometry, target = spec.geometry, spec.sparsity
        else:
            geometry = replace(default, out_dim=out_dim)
        if c.family == "conv" and geometry.layout != "channels_last" and any(k != 1 for k in w.shape[2:]):
            return f"layout {geometry.layout!r}: banks do not run along the input channels"
        if not worth_packing(w, geometry.bank_size):
            return "dense weight (fewer zeros than one per bank)"
        try:
            return _pack(w, geometry, target)
        except NotBankBalancedError as error:
            return f"not bank-balanced ({error})"

    return _decide(model, _candidates(model), packed_of, example_inputs, min_speedup, min_weights)


def load_bank_sparse(
    model: nn.Module,
    path: str | Path,
    *,
    example_inputs: Any = None,
    min_speedup: float = MIN_SPEEDUP,
    min_weights: int = MIN_WEIGHTS,
    max_bytes: int | None = None,
) -> ConversionReport:
    """Load a packed file (``export.save_packed``, ``pruning-tools export``) into ``model``, an instance
    of the architecture it was exported from: its packed weights become bank-sparse layers (or dense
    weights, where the rule of ``to_bank_sparse`` keeps a layer dense), every other tensor of the file
    is loaded into the parameter or buffer of that name. Every tensor of the file must be a tensor of
    the model with its shape, and every parameter and buffer of the model must be in the file (as
    ``load_state_dict(strict=True)``); the file is checked before anything is changed. ``max_bytes``:
    the bound on what the file may make us allocate (``export.read_packed``).
    """
    tensors = read_packed(path, max_bytes=max_bytes)
    own = dict(model.state_dict(keep_vars=True))
    unexpected = sorted(set(tensors) - set(own))
    missing = sorted(set(own) - set(tensors))
    if unexpected or missing:
        raise ValueError(f"{path} does not fit the model: unexpected {unexpected[:5]}, missing {missing[:5]}")
    for name, t in tensors.items():
        shape = tuple(t.shape) if isinstance(t, PackedTensor) else tuple(t.shape)
        if shape != tuple(own[name].shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {list(shape)}, the model's {list(own[name].shape)}")
    with torch.no_grad():  # the dense tensors (biases, norms, unpruned weights)
        for name, t in tensors.items():
            if not isinstance(t, PackedTensor):
                own[name].copy_(t)

    def packed_of(c: _Candidate, pname: str, w: Tensor) -> PackedTensor | str:
        p = tensors.get(_join(c.name, pname))
        if not isinstance(p, PackedTensor):
            return "stored dense in the file"
        if is_transposed_linear(c.module) != (p.out_dim == 1):
            return f"packed with out_dim={p.out_dim}, expected {int(is_transposed_linear(c.module))} for {c.kind}"
        if c.family == "conv" and p.layout != "channels_last" and any(k != 1 for k in p.shape[2:]):
            return f"layout {p.layout!r}: banks do not run along the input channels"
        return p

    report = _decide(model, _candidates(model), packed_of, example_inputs, min_speedup, min_weights)
    left_dense = dict(model.state_dict(keep_vars=True))  # converted layers hold their packed data now
    with torch.no_grad():  # a packed weight is rebuilt dense only where its layer stays dense
        for name, t in tensors.items():
            if isinstance(t, PackedTensor) and name in left_dense:
                left_dense[name].copy_(unpack(t))
    return report


__all__ = ["ConversionReport", "LayerReport", "load_bank_sparse", "to_bank_sparse"]
