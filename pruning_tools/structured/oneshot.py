"""One-shot structured pruning with calibration data: ``oneshot(..., structure="channel")``.

Groups come from the same trace as ``Prune(structure="channel")`` (the first calibration batch is the
example input). Each unit is scored once and the lowest go at once:

- ``"magnitude"``: the L2 norm over every member slice (as training-time pruning);
- ``"wanda"``: structured Wanda: per consuming column ``j``, ``||W[:, j]||_2 * ||x_j||_2`` (the norm
  of that input channel over the calibration tokens or positions), summed over the unit's columns;
- ``"flap"``: FLAP's fluctuation score, ``||W[:, j]||_2^2 * var(x_j)``, summed likewise, and the
  removed channels' mean input folded into the consuming layer's bias (``b += W[:, j] * mean(x_j)``;
  exact for Linear and ``Conv1D``, for a convolution exact away from zero-padded borders). A consumer
  without a bias is not compensated (the report names it).

Units no consuming layer reads (a group whose channels go to a model output) score by magnitude.
Then ``shrink(model, report.prune)`` removes them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..config import check_choice
from ..post_training import capture as C
from . import groups as G
from .pruner import StructuredPrune
from .trace import is_transposed_linear

METHODS = ("magnitude", "wanda", "flap")


@dataclass
class ChannelStats:
    """Per input channel of one consuming layer: count, sum and sum of squares over calibration rows."""

    count: int = 0
    total: Tensor | None = None  # [channels] float64
    squares: Tensor | None = None

    def add(self, x: Tensor, dim: int) -> None:
        rows = x.detach().double().movedim(dim, -1).reshape(-1, x.shape[dim])  # [rows, channels]
        self.count += rows.shape[0]
        s, q = rows.sum(0), rows.pow(2).sum(0)
        self.total = s if self.total is None else self.total + s
        self.squares = q if self.squares is None else self.squares + q

    def mean(self) -> Tensor:
        assert self.total is not None
        return self.total / max(1, self.count)

    def norm(self) -> Tensor:
        assert self.squares is not None
        return self.squares.sqrt()

    def variance(self) -> Tensor:
        assert self.squares is not None
        return (self.squares / max(1, self.count) - self.mean().pow(2)).clamp_min(0)


@dataclass
class ChannelOneShotReport:
    """``prune``: the pruner holding the masks (give it to ``shrink``); per group the units removed;
    ``compensated``/``uncompensated``: consuming layers whose bias took (or could not take) FLAP's
    compensation; ``seconds`` (wall)."""

    method: str
    prune: StructuredPrune
    removed: list[list[int]] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    uncompensated: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _consumers(model: nn.Module) -> dict[str, tuple[nn.Module, int, int]]:
    """Weight name -> (module, channel dim of its input, input-channel dim of the weight) for the
    layers whose input columns can be scored: Linear, ``Conv1D`` (weight ``[in, out]``), convolutions."""
    out: dict[str, tuple[nn.Module, int, int]] = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(module, nn.Linear):
            out[f"{prefix}weight"] = (module, -1, 1)
        elif is_transposed_linear(module):
            out[f"{prefix}weight"] = (module, -1, 0)
        elif isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1:
            out[f"{prefix}weight"] = (module, 1, 1)
    return out


def oneshot_channels(
    model: nn.Module,
    calibration: Iterable[Any],
    prune_dict: Mapping[str, Any],
    method: str = "flap",
    *,
    round_to: int = 1,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> ChannelOneShotReport:
    """Remove, once, the lowest-scoring units of every group ``prune_dict`` targets (fraction of each
    weight's output channels); masks every member; returns the report (``report.prune`` for ``shrink``).

    ``calibration``: an iterable of batches (as ``oneshot``); the first is traced. ``forward(model,
    batch)`` feeds a batch (default: ``model(**b)`` / ``model(*b)`` / ``model(b)``).
    """
    started = time.perf_counter()
    method = check_choice("method", method, METHODS)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module")
    if forward is not None and not callable(forward):
        raise TypeError(f"forward={forward!r} is not allowed: expected a callable or None")
    batches = C.as_batches(calibration, forward is not None)
    first = batches[0]
    example = first if isinstance(first, (tuple, dict)) else tuple(first) if isinstance(first, list) else (first,)
    if forward is not None:
        raise ValueError("forward= is not allowed with structure='channel': the trace feeds batches as model(*b)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="structure='channel': the output channels")
        prune = StructuredPrune(model, 0, 0, 1, prune_dict, structure="channel", example_inputs=example,
                                round_to=round_to)  # fmt: skip
    consumers = _consumers(model)
    wanted = {name for g in prune.plan.groups for (name, dim) in g.slices if consumers.get(name, (0, 0, -1))[2] == dim}
    stats = {name: ChannelStats() for name in wanted}
    was_training = model.training
    handles = []
    if method != "magnitude":
        for name in wanted:
            module, dim, _ = consumers[name]
            handles.append(module.register_forward_pre_hook(lambda m, args, n=name, d=dim: stats[n].add(args[0], d)))
        model.eval()
        try:
            with torch.no_grad():
                for batch in batches:
                    C.default_forward(model, batch)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
    params = dict(model.named_parameters())
    removed = []
    for i, g in enumerate(prune.plan.groups):
        keep = G.kept_units(g.units, prune._final[i], round_to, g.width(g.producers[0]))
        scores = _scores(method, g, params, stats, consumers)
        kept = set(G.choose(scores, keep))
        removed.append([u for u in range(g.units) if u not in kept])
    report = ChannelOneShotReport(method, prune, removed)
    if method == "flap":
        _compensate(prune.plan.groups, removed, params, consumers, stats, report)
    prune._removed = removed
    prune._set_masks()
    prune._step = 1
    for name in prune.config.params:
        prune._mask_targets[name] = prune._zero_fraction(name)
    prune._apply()
    report.seconds = time.perf_counter() - started
    return report


def _column_norms(weight: Tensor, dim: int) -> Tensor:
    """``[columns]``: the L2 norm of each input column (input channel) of a weight, over everything else."""
    w = weight.detach().double()
    return w.pow(2).sum([d for d in range(w.dim()) if d != dim]).sqrt()


def _scores(
    method: str,
    g: G.Group,
    params: Mapping[str, Tensor],
    stats: Mapping[str, ChannelStats],
    consumers: Mapping[str, tuple[nn.Module, int, int]],
) -> Tensor:
    if method == "magnitude":
        return G.unit_scores(g, params)
    total = torch.zeros(g.units, dtype=torch.float64)
    scored = False
    for (name, dim), idx in g.slices.items():
        if name not in stats or stats[name].count == 0 or dim != consumers[name][2]:
            continue
        columns = _column_norms(params[name], dim)  # [in channels]
        per = columns * stats[name].norm() if method == "wanda" else columns.pow(2) * stats[name].variance()
        total += per[torch.tensor(idx)].sum(1)
        scored = True
    return total if scored else G.unit_scores(g, params)


def _compensate(
    groups: list[G.Group],
    removed: list[list[int]],
    params: Mapping[str, Tensor],
    consumers: Mapping[str, tuple[nn.Module, int, int]],
    stats: Mapping[str, ChannelStats],
    report: ChannelOneShotReport,
) -> None:
    """FLAP's bias compensation: each consumer's bias takes the removed input channels' mean contribution."""
    with torch.no_grad():
        for g, gone in zip(groups, removed):
            if not gone:
                continue
            for (name, dim), idx in g.slices.items():
                if name not in stats or stats[name].count == 0 or dim != consumers[name][2]:
                    continue
                module = consumers[name][0]
                bias = getattr(module, "bias", None)
                if not isinstance(bias, nn.Parameter):
                    report.uncompensated.append(name)
                    continue
                columns = torch.tensor([i for u in gone for i in idx[u]])
                mean = stats[name].mean()[columns]  # [removed]
                w = params[name].detach().double().index_select(dim, columns)
                if dim == 0:  # Conv1D [in, out]
                    shift = mean @ w
                else:  # Linear [out, in] / conv [out, in, *kernel]
                    shift = (w.flatten(2) if w.dim() > 2 else w.unsqueeze(-1)).sum(-1) @ mean
                bias.add_(shift.to(bias.dtype))
                report.compensated.append(name)
