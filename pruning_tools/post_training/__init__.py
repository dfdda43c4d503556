"""One-shot pruning with calibration data: magnitude, Wanda or SparseGPT, on every pattern the pruner has.

>>> import torch
>>> import pruning_tools
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
>>> calibration = torch.randn(64, 32).split(16)  # 4 batches
>>> report = pruning_tools.oneshot(model, calibration, {"*.weight": 0.5}, method="sparsegpt", bank_size=4)
>>> report.layers["0.weight"].pattern, report.layers["0.weight"].sparsity
('2:4', 0.5)
>>> report.layers["0.weight"].error_after < report.layers["0.weight"].error_before
True

``oneshot(model, calibration, prune_dict, method=...)`` prunes the weights ``prune_dict`` names (as in
``Prune``: names or globs -> sparsity, or per-parameter dicts; ``balance`` / ``bank_size`` / ``layout``
as in ``Prune``) once, layer by layer, in the model's execution order:

- The prunable layers are grouped into *blocks*: by default the children of the ``nn.ModuleList`` /
  ``nn.Sequential`` that holds most of them (a transformer's layers); layers outside it are groups
  of their own. For each group, the calibration batches run and hooks accumulate each layer's input
  Hessian ``X^T X`` (``[D, D]``, over the inputs a row combines, ``layers.py``); then the group's layers
  are pruned and written; then the next group sees the outputs of the pruned ones. When each block
  feeds the next (checked on the first batch), the block inputs are kept and carried from block to
  block, so the model runs once up to the first block and then block by block: memory is one
  block's inputs plus one Hessian per layer of the block. Otherwise each group takes a full pass.
- ``method="magnitude"``: ``|w|`` (calibration optional; used only for the report's errors).
  ``"wanda"``: ``|w| * ||x||``. ``"sparsegpt"``: the saliency ``w^2 / [H^-1]_jj^2`` chosen inside the
  sweep, and the kept weights updated to reconstruct the layer's outputs (``sparsegpt.py``: dampening).
- Every pattern: unstructured per tensor (exactly ``round(n * (1 - s))`` kept), bank-balanced with any
  bank size and tail banks, N:M (``bank_size=4, sparsity 0.5`` is 2:4) — the budgets of ``Prune``,
  checked by ``check_banks``. Afterwards ``Prune(..., restore_sparsity=True)`` fine-tunes with the masks kept.

Layers: ``nn.Linear``, convolutions (not grouped, not transposed), ``nn.MultiheadAttention``
projections and transformers' ``Conv1D``. A ``prune_dict`` entry the method cannot calibrate, an
empty calibration, a batch the model cannot consume, a layer the forward never calls, non-finite
inputs: a clear error, and the model is left exactly as it was when it happens before the first
layer is written (errors later name the layers already written). The model's ``training`` flag is
restored; everything runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed as D
from .. import geometry as G
from .. import masks as M
from ..config import BALANCES, LAYOUTS, ParamSpec, check_bank_size, check_choice, check_step, resolve_prune_dict
from ..pytorch_pruning import TorchBridge
from . import capture as C
from . import layers as L
from . import sparsegpt as S
from . import wanda as W

METHODS = ("magnitude", "wanda", "sparsegpt")
Progress = Callable[[int, int, str], None]


@dataclass
class OneShotLayerReport:
    """What one-shot pruning did to one weight.

    ``error_before`` / ``error_after``: the layer's relative reconstruction error on its calibration
    inputs, ``||(W' - W) X||^2 / ||W X||^2``, with ``W'`` the chosen mask applied to the original
    weights (before any update) and the weights written (after SparseGPT's update; the same for
    magnitude and Wanda); ``None`` without calibration inputs. ``rows``: calibration feature rows
    (tokens, or output positions of a convolution). ``damping``: SparseGPT's ``lambda / mean(diag H)``.
    """

    name: str
    method: str
    pattern: str
    target: float
    sparsity: float
    balanced: bool
    error_before: float | None = None
    error_after: float | None = None
    rows: int = 0
    damping: float | None = None
    seconds: float = 0.0
    numel: int = 0


@dataclass
class OneShotReport:
    """Per layer ``OneShotLayerReport``; ``seconds`` (wall), ``peak_bytes`` (the most bytes of Hessians and
    cached block inputs held at once), ``peak_rss_bytes`` (the process's resident-memory high-water
    mark at the end, everything before included), ``mode`` (``"chained blocks"``, ``"full passes"``
    or ``"no calibration"``), ``batches``."""

    method: str
    layers: dict[str, OneShotLayerReport] = field(default_factory=dict)
    seconds: float = 0.0
    peak_bytes: int = 0
    peak_rss_bytes: int = 0
    mode: str = ""
    batches: int = 0

    @property
    def sparsity(self) -> float:
        """Zeros over all pruned weights (each layer weighted by its size)."""
        total = sum(r.numel for r in self.layers.values())
        return sum(r.sparsity * r.numel for r in self.layers.values()) / max(1, total)

    def to_dict(self) -> dict:
        """Plain data (JSON-ready)."""
        return {**asdict(self), "sparsity": self.sparsity}


def oneshot(
    model: nn.Module,
    calibration: Iterable[Any] | None,
    prune_dict: Mapping[str, Any],
    method: str = "sparsegpt",
    *,
    balance: str = "fix",
    bank_size: int = 64,
    layout: str = "channels_last",
    forward: Callable[[nn.Module, Any], Any] | None = None,
    blocks: str | Sequence[str] | None = "auto",
    damp: float = 0.01,
    block_size: int = 128,
    progress: Progress | None = None,
    structure: str = "none",
    round_to: int = 1,
) -> Any:
    """Prune ``model`` once with calibration data; see the module docstring.

    - ``calibration``: an iterable of batches (a tensor, a tuple or a dict of tensors each, fed as
      ``model(batch)``, ``model(*batch)``, ``model(**batch)``; or anything ``forward(model, batch)``
      takes), read once; a few hundred samples is typical. ``None`` only with ``method="magnitude"``.
    - ``prune_dict``, ``balance``, ``bank_size``, ``layout``: as in ``Prune`` (``"global"`` balance with
      magnitude only).
    - ``blocks``: ``"auto"``, module names in execution order, or ``None`` (every layer its own group).
    - ``damp``: SparseGPT's dampening, a fraction of the Hessian's mean diagonal (> 0);
      ``block_size``: columns per lazy update block.
    - ``progress(done, total, name)``: called after each layer.

    - ``structure="channel"``: remove whole output channels, heads and neurons instead
      (``pruning_tools.structured.oneshot``: ``method`` "magnitude", "wanda" or "flap"; ``round_to``);
      returns a ``ChannelOneShotReport`` whose ``prune`` goes to ``pruning_tools.shrink``.

    Returns an ``OneShotReport``. The model is modified in place (pruned weights exactly ``+0.0``).
    """
    if check_choice("structure", structure, ("none", "channel")) == "channel":
        return _oneshot_channels(model, calibration, prune_dict, method, round_to, forward)
    if round_to != 1:
        raise ValueError(f"round_to={round_to!r} is not allowed: expected 1 unless structure='channel'")
    started = time.perf_counter()
    method = check_choice("method", method, METHODS)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module")
    defaults = _check_options(balance, bank_size, layout, damp, forward, progress)
    block_size = check_step("block_size", block_size, minimum=1)
    bridge = TorchBridge(model)  # names, shapes, out dims and layouts exactly as Prune reads them
    specs = resolve_prune_dict(
        prune_dict, bridge.shapes(), defaults, bridge.out_dims(), bridge.layouts(defaults["layout"]),
        bridge.aliases(), bridge.dtypes(),
    )  # fmt: skip
    params = {name: bridge.parameter(name) for name in specs}
    _check_weights(params, specs, method)
    modules = dict(model.named_modules())
    described = {
        name: L.describe(name, bridge.spelled[name], spec, params[name], modules) for name, spec in specs.items()
    }
    unsupported = {name: d for name, d in described.items() if isinstance(d, str)}
    if method != "magnitude" and unsupported:
        raise ValueError(
            f"prune_dict matches parameters method={method!r} cannot prune: " + "; ".join(unsupported.values())
        )
    if calibration is None and method != "magnitude":
        raise ValueError(f"calibration=None is not allowed with method={method!r}: expected an iterable of batches")
    batches = None if calibration is None else C.as_batches(calibration, forward is not None)
    job = _Pruning(model, params, specs, described, method, batches, forward or C.default_forward, blocks, damp,
                   block_size)  # fmt: skip
    job.progress = progress
    _run(job, model)
    report = job.report
    report.batches = len(batches or ())
    report.seconds = time.perf_counter() - started
    report.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return report


def _oneshot_channels(
    model: nn.Module,
    calibration: Iterable[Any] | None,
    prune_dict: Mapping[str, Any],
    method: str,
    round_to: int,
    forward: Callable[[nn.Module, Any], Any] | None,
) -> Any:
    """``oneshot(..., structure="channel")``: whole channels scored with the calibration data."""
    from ..structured.oneshot import METHODS as CHANNEL_METHODS
    from ..structured.oneshot import oneshot_channels

    check_choice("method", method, CHANNEL_METHODS)
    if calibration is None:
        raise ValueError("calibration=None is not allowed with structure='channel': its first batch is traced")
    return oneshot_channels(model, calibration, prune_dict, method, round_to=round_to, forward=forward)


def _check_options(
    balance: str, bank_size: int, layout: str, damp: float, forward: Any, progress: Any
) -> dict[str, Any]:
    """The pattern defaults (``balance``, ``bank_size``, ``layout``) validated; ``damp`` and the callables checked."""
    defaults: dict[str, Any] = {
        "balance": check_choice("balance", balance, BALANCES),
        "bank_size": check_bank_size("bank_size", bank_size),
        "layout": check_choice("layout", layout, LAYOUTS),
    }
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not math.isfinite(damp) or damp <= 0:
        raise ValueError(f"damp={damp!r} is not allowed: expected a finite number > 0 (the paper uses 0.01)")
    for argument, value in (("forward", forward), ("progress", progress)):
        if value is not None and not callable(value):
            raise TypeError(f"{argument}={value!r} is not allowed: expected a callable or None")
    return defaults


def _check_weights(params: Mapping[str, Tensor], specs: Mapping[str, ParamSpec], method: str) -> None:
    """Every listed weight floating-point and whole (not a shard); no pooled pattern with calibration."""
    for name in specs:
        if not params[name].is_floating_point():
            raise TypeError(
                f"prune_dict entry {name!r} has dtype {params[name].dtype}: expected a floating-point weight"
            )
        if D.is_sharded(params[name]):
            raise ValueError(f"{name} is a sharded DTensor: oneshot needs whole weights (gather the model first)")
    pooled = [n for n, s in specs.items() if s.balance == "global"]
    if method != "magnitude" and pooled:
        raise ValueError(
            f"balance='global' is not allowed with method={method!r} (for {pooled}): one threshold across layers "
            "needs every layer's scores at once, while calibration prunes one layer after another; "
            "use balance='none' (per tensor) or method='magnitude'"
        )


def _run(job: _Pruning, model: nn.Module) -> None:
    """Run ``job`` in eval mode without gradients, the training flag restored; an error names what was written."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                job.run()
            except (ValueError, TypeError, RuntimeError) as error:
                if job.written and "already pruned and written" not in str(error):
                    raise type(error)(f"{error}; already pruned and written: {job.written}") from error
                raise
    finally:
        model.train(was_training)


def pattern_name(spec: ParamSpec) -> str:
    """``"unstructured"``, ``"2:4"`` style for banks of at most 16, else ``"bank-64"`` style."""
    if spec.balance != "fix":
        return "unstructured" if spec.balance == "none" else "global"
    if spec.bank_size <= 16:
        return f"{G.bank_budget(spec.bank_size, spec.bank_size, spec.sparsity).keep}:{spec.bank_size}"
    return f"bank-{spec.bank_size}"


def bank_segments(target: L.Target) -> list[S.Segment] | None:
    """The banks of one matrix row ``[D]`` as ``(first column, length, kept)``; None: unstructured."""
    spec = target.spec
    if spec.balance != "fix":
        return None
    row_len = G.row_length(spec.shape, spec.layout, spec.out_dim)
    width = spec.numel // max(1, target.outputs)
    budget = G.bank_budget(row_len, spec.bank_size, spec.sparsity)
    segments = []
    for row in range(0, width, row_len):
        segments += [(row + b * spec.bank_size, spec.bank_size, budget.keep) for b in range(budget.full_banks)]
        if budget.tail_len:
            segments.append((row + budget.full_banks * spec.bank_size, budget.tail_len, budget.tail_keep))
    return segments


class _Pruning:
    """One call of ``oneshot``: plan the groups, run them, write the layers, fill the report."""

    def __init__(
        self,
        model: nn.Module,
        params: dict[str, nn.Parameter],
        specs: dict[str, ParamSpec],
        described: dict[str, tuple[L.Target, list[L.Source]] | str],
        method: str,
        batches: list | None,
        forward: C.Forward,
        blocks: str | Sequence[str] | None,
        damp: float,
        block_size: int,
    ) -> None:
        self.model, self.params, self.specs, self.method = model, params, specs, method
        self.batches, self.forward = batches, forward
        self.damp, self.block_size = damp, block_size
        self.progress: Progress | None = None
        self.report = OneShotReport(method)
        self.modules = dict(model.named_modules())
        self.targets = {n: d[0] for n, d in described.items() if not isinstance(d, str)}
        self.sources = {n: d[1] for n, d in described.items() if not isinstance(d, str)}
        self.free = [n for n, d in described.items() if isinstance(d, str)]  # magnitude only: no inputs
        self.blocks = self._block_names(blocks)
        self.memory = C.Memory()
        self.written: list[str] = []
        self.masks = self._magnitude_masks() if method == "magnitude" else {}

    # ------------------------------------------------------------ plan

    def _block_names(self, blocks: str | Sequence[str] | None) -> list[str]:
        if blocks is None:
            return []
        if isinstance(blocks, str):
            if blocks != "auto":
                raise ValueError(f"blocks={blocks!r} is not allowed: expected 'auto', a list of module names or None")
            return C.find_blocks(self.model, [t.hook_module for t in self.targets.values()])
        names = list(blocks)
        for name in names:
            if not isinstance(name, str) or name not in self.modules:
                raise ValueError(f"blocks entry {name!r} is not a module of the model")
        return names

    def _magnitude_masks(self) -> dict[str, Tensor]:
        params = self.params
        masks = {}
        pooled = [n for n, s in self.specs.items() if s.balance == "global"]
        if pooled:
            pooled_target = sum(self.specs[n].sparsity * self.specs[n].numel for n in pooled) / max(
                1, sum(self.specs[n].numel for n in pooled)
            )
            for name, mask in zip(
                pooled, M.global_masks([params[n] for n in pooled], [None] * len(pooled), pooled_target)
            ):
                masks[name] = mask
        for name, spec in self.specs.items():
            if name not in masks:
                w = params[name]
                masks[name] = M.compute_mask(
                    w, None, spec.sparsity, spec.balance, spec.bank_size, spec.layout, spec.out_dim
                )
        return masks

    # ------------------------------------------------------------ run

    def run(self) -> None:
        if self.batches is None:  # magnitude without calibration
            self.report.mode = "no calibration"
            for name in self.specs:
                self._write(name, *self._magnitude(name), None)
            return
        watched = sorted({t.hook_module for t in self.targets.values()})
        seen = C.trace(self.model, self.batches[0], self.forward, watched, self.blocks)
        missing = [n for n, t in self.targets.items() if t.hook_module not in seen.calls]
        if missing:
            modules = sorted({self.targets[n].hook_module for n in missing})
            raise ValueError(
                f"prune_dict matches {missing}, whose modules {modules} the forward pass never calls on calibration "
                "batch 0: nothing to calibrate them with"
            )
        for name in self.free:  # magnitude only: weights without inputs go first
            self._write(name, *self._magnitude(name), None)
        groups = self._groups(seen)
        chained = C.is_chain(seen, self.blocks) and self._blocks_contiguous(groups)
        self.report.mode = "chained blocks" if chained else "full passes"
        if not chained:
            for _, names in groups:
                self._group(names, self._full_pass)
            return
        done_blocks = False
        for block, names in groups:
            if block is None:
                self._group(names, self._full_pass)
            elif not done_blocks:
                self._chained_blocks(groups)
                done_blocks = True

    def _full_pass(self) -> None:
        C.run(self.model, self.batches or [], self.forward)

    def _groups(self, seen: C.Trace) -> list[tuple[str | None, list[str]]]:
        """Targets grouped by block (or alone), in execution order."""
        position = {name: i for i, name in enumerate(seen.order)}

        def block_of(name: str) -> str | None:
            hook = self.targets[name].hook_module
            return next((b for b in self.blocks if C.inside(hook, b)), None)

        order = sorted(self.targets, key=lambda n: position[self.targets[n].hook_module])
        groups: list[tuple[str | None, list[str]]] = []
        for name in order:
            block = block_of(name)
            if block is not None and any(b == block for b, _ in groups):
                next(names for b, names in groups if b == block).append(name)
            else:
                groups.append((block, [name]))
        key = {b: position.get(b, -1) for b in self.blocks}
        return sorted(
            groups, key=lambda g: key[g[0]] if g[0] is not None else position[self.targets[g[1][0]].hook_module]
        )

    def _blocks_contiguous(self, groups: list[tuple[str | None, list[str]]]) -> bool:
        kinds = [block is not None for block, _ in groups]
        if True not in kinds:
            return False
        first, last = kinds.index(True), len(kinds) - 1 - kinds[::-1].index(True)
        return all(kinds[first : last + 1])

    def _chained_blocks(self, groups: list[tuple[str | None, list[str]]]) -> None:
        members = {block: names for block, names in groups if block is not None}
        inputs = C.block_inputs(self.model, self.batches or [], self.forward, self.modules[self.blocks[0]])
        if len(inputs) != len(self.batches or ()):
            raise RuntimeError(f"block {self.blocks[0]} was not called on every calibration batch")
        held = C.tensor_bytes(inputs)
        self.memory.change(held)
        last = max(i for i, b in enumerate(self.blocks) if b in members)
        for block_name in self.blocks[: last + 1]:
            block = self.modules[block_name]

            def run_block(block: nn.Module = block, inputs: list = inputs) -> None:
                for args, kwargs in inputs:
                    block(*args, **kwargs)

            if block_name in members:
                self._group(members[block_name], run_block)
            if block_name == self.blocks[last]:
                break
            inputs = [((C.first(block(*args, **kwargs)), *args[1:]), kwargs) for args, kwargs in inputs]
            now = C.tensor_bytes(inputs)
            self.memory.change(now - held)
            held = now
        self.memory.change(-held)

    # ------------------------------------------------------------ one group

    def _group(self, names: list[str], run: Callable[[], None]) -> None:
        sources = [s for n in names for s in self.sources[n]]
        unique = list({s.key: s for s in sources}.values())
        hessians = C.Hessians(self.memory)
        with C.capturing(self.modules, unique, hessians):
            run()
        try:
            for name in names:
                for _, _, key in self.targets[name].rows:
                    if key in hessians.nonfinite:
                        raise ValueError(
                            self._failure(name, f"non-finite values (inf/NaN) in its calibration inputs ({key})")
                        )
                    if not hessians.rows.get(key):
                        raise ValueError(self._failure(name, f"no calibration input reached it ({key})"))
            for name in names:
                started = time.perf_counter()
                weight, keep, damping = self._prune(name, hessians)
                self._write(name, weight, keep, hessians, damping, started)
        finally:
            hessians.release()

    def _failure(self, name: str, why: str) -> str:
        written = f"; already pruned and written: {self.written}" if self.written else "; the model is unchanged"
        return f"{name}: {why}{written}"

    def _prune(self, name: str, hessians: C.Hessians) -> tuple[Tensor, Tensor, float | None]:
        """``(new weight, keep-mask, SparseGPT's dampening)``, the parameter's shape and dtype."""
        if self.method == "magnitude":
            return (*self._magnitude(name), None)
        target = self.targets[name]
        spec = target.spec
        w = target.param.detach()
        matrix = target.matrix(w)  # [O, D]
        if self.method == "wanda":
            norms = torch.empty_like(matrix, dtype=torch.promote_types(matrix.dtype, torch.float32))
            for start, end, key in target.rows:
                norms[start:end] = torch.diagonal(hessians.sums[key]).clamp(min=0).sqrt()[None, :]
            scores = target.unmatrix(W.scores(matrix, norms))
            keep = M.compute_mask(
                w, None, spec.sparsity, spec.balance, spec.bank_size, spec.layout, spec.out_dim, scores
            )
            return w.masked_fill(~keep, 0.0), keep, None
        segments = bank_segments(target)
        total = G.keep_count(spec.numel, spec.sparsity)
        pruned = torch.empty_like(matrix, dtype=torch.promote_types(matrix.dtype, torch.float32))
        kept = torch.empty_like(matrix, dtype=torch.bool)
        dampings = []
        for start, end, key in target.rows:
            keep_total = S.share(total, end, target.outputs) - S.share(total, start, target.outputs)
            solved = S.prune_matrix(
                matrix[start:end], hessians.sums[key], segments, keep_total, self.damp, self.block_size
            )
            pruned[start:end] = solved.weight
            kept[start:end] = solved.keep
            dampings.append(solved.damping)
        if not bool(torch.isfinite(pruned).all()):
            raise RuntimeError(self._failure(name, "SparseGPT produced non-finite weights (degenerate inputs)"))
        keep = target.unmatrix(kept)
        return target.unmatrix(pruned).to(w.dtype).masked_fill(~keep, 0.0), keep, max(dampings)

    def _magnitude(self, name: str) -> tuple[Tensor, Tensor]:
        w = self.params[name].detach()
        keep = self.masks[name].to(w.device)
        return w.masked_fill(~keep, 0.0), keep

    # ------------------------------------------------------------ write and report

    def _write(
        self,
        name: str,
        new: Tensor,
        keep: Tensor,
        hessians: C.Hessians | None,
        damping: float | None = None,
        started: float | None = None,
    ) -> None:
        spec = self.specs[name]
        param = self.params[name]
        before = after = None
        rows = 0
        target = self.targets.get(name)
        if hessians is not None and target is not None:
            before, after, rows = _errors(target, param.detach(), new, keep, hessians)
        param.copy_(new)  # pruned positions are +0.0 in new
        self.written.append(name)
        balanced = (
            M.check_banks(param.detach(), spec.bank_size, spec.layout, spec.out_dim, spec.sparsity).balanced
            if spec.balance == "fix"
            else True
        )
        nonzero = int(torch.count_nonzero(param.detach()))
        self.report.layers[name] = OneShotLayerReport(
            name=name,
            method=self.method,
            pattern=pattern_name(spec),
            target=spec.sparsity,
            sparsity=1.0 - nonzero / max(1, spec.numel),
            balanced=balanced,
            error_before=before,
            error_after=after,
            rows=rows,
            damping=damping,
            seconds=0.0 if started is None else time.perf_counter() - started,
            numel=spec.numel,
        )
        self.report.peak_bytes = self.memory.peak
        if self.progress is not None:
            self.progress(len(self.written), len(self.specs), name)


def _errors(target: L.Target, old: Tensor, new: Tensor, keep: Tensor, hessians: C.Hessians) -> tuple[float, float, int]:
    """Relative output errors ``||dW X||^2 / ||W X||^2`` (``= tr(dW H dW^T) / tr(W H W^T)``) of the
    mask alone on the old weights and of the new weights, and the feature rows behind ``H``."""
    w = target.matrix(old).double()  # [O, D]
    masked = target.matrix(old.masked_fill(~keep, 0.0)).double()
    w_new = target.matrix(new).double()

    def energy(m: Tensor, h: Tensor) -> float:
        return float(((m @ h) * m).sum())

    err_before = err_after = norm = 0.0
    rows = 0
    for start, end, key in target.rows:
        h = hessians.sums[key].double()
        err_before += energy(masked[start:end] - w[start:end], h)
        err_after += energy(w_new[start:end] - w[start:end], h)
        norm += energy(w[start:end], h)
        rows = max(rows, hessians.rows[key])
    scale = max(norm, 1e-300)
    return err_before / scale, err_after / scale, rows


__all__ = ["METHODS", "OneShotLayerReport", "OneShotReport", "bank_segments", "oneshot", "pattern_name"]
