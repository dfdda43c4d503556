"""Correctness on the device: masks against the CPU engine bit for bit, and ``Prune`` on device weights.

Every function takes the ``device`` to check. On a CPU (the stand-in the tests use) the device side
runs the pure-PyTorch mask path, the one CUDA tensors take, and the reference the compiled CPU
engine; synchronisations are counted only where CUDA exists.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import Tensor, nn

from pruning_tools import _native
from pruning_tools import masks as M
from pruning_tools.benchmarks.gpu.cases import GlobalCase, MaskCase, case_tensors, global_tensors
from pruning_tools.benchmarks.gpu.report import Row, check_row, group_counts, info_row
from pruning_tools.pytorch_pruning import Prune
from pruning_tools.schedule import is_refresh_step

if TYPE_CHECKING:
    from torch.profiler import profile

MaskFn = Callable[..., Tensor]  # masks.compute_mask's signature
GlobalFn = Callable[..., list[Tensor]]  # masks.global_masks's signature


def reference_engine() -> str:
    """Which CPU engine computes the reference masks: the compiled kernel, or the PyTorch path."""
    return "native" if _native.library("mask_select") is not None else "torch"


@contextlib.contextmanager
def device_engine(device: torch.device) -> Iterator[None]:
    """On a CPU stand-in, force the PyTorch path (what CUDA tensors run); on a GPU nothing to force."""
    with _native.use_engine("torch") if device.type == "cpu" else contextlib.nullcontext():
        yield


# ---------------------------------------------------------------- masks, bit for bit


@dataclass
class Comparison:
    """A device mask against the reference: ``mismatches`` positions differ (0: bit for bit equal)."""

    label: str
    group: str  # rows of the report: "bank-64 93.75% float32", ...
    mismatches: int
    kept_device: int
    kept_reference: int
    device: str  # where the device mask was computed (proof that it was)
    error: str = ""  # the exception computing it raised, if any

    @property
    def equal(self) -> bool:
        return self.mismatches == 0 and not self.error

    def describe(self) -> str:
        return f"{self.label}: {self.error or f'{self.mismatches} positions differ'}"


def _raised(label: str, group: str, error: Exception) -> Comparison:
    return Comparison(label, group, -1, -1, -1, "?", f"{type(error).__name__}: {str(error)[:200]}")


def compare(label: str, group: str, got: Tensor, expected: Tensor) -> Comparison:
    """``got`` (on any device) against ``expected`` (on the CPU), both bool masks of one shape."""
    device = str(got.device)
    got = got.cpu()
    if got.shape != expected.shape or got.dtype != torch.bool:
        return Comparison(label, group, max(1, expected.numel()), -1, int(expected.sum()), device)
    return Comparison(label, group, int((got != expected).sum()), int(got.sum()), int(expected.sum()), device)


def _on(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def _group(pattern_label: str, dtype: torch.dtype) -> str:
    return f"{pattern_label} {str(dtype).removeprefix('torch.')}"


def compare_mask_cases(
    cases: Sequence[MaskCase], device: torch.device, device_compute: MaskFn = M.compute_mask
) -> list[Comparison]:
    """Each case's mask computed on ``device`` (by ``device_compute``) against the CPU engine's."""
    out = []
    for case in cases:
        w, prev = case_tensors(case)
        p, g = case.pattern, case.geometry
        group = _group(p.label, case.dtype)
        expected = M.compute_mask(w, prev, p.sparsity, p.balance, p.bank_size, g.layout, g.out_dim)
        try:
            with device_engine(device):
                got = device_compute(
                    w.to(device), _on(prev, device), p.sparsity, p.balance, p.bank_size, g.layout, g.out_dim
                )
        except Exception as error:  # noqa: BLE001 - a failing case, named; the others go on
            out.append(_raised(case.label, group, error))
            continue
        out.append(compare(case.label, group, got, expected))
    return out


def compare_global_cases(
    cases: Sequence[GlobalCase], device: torch.device, device_compute: GlobalFn = M.global_masks
) -> list[Comparison]:
    """Each pool's global masks computed on ``device`` against the CPU engine's, tensor by tensor."""
    out = []
    for case in cases:
        tensors = list(global_tensors(case))
        weights, prevs = [w for w, _ in tensors], [m for _, m in tensors]
        expected = M.global_masks(weights, prevs, case.pattern.sparsity)
        group = _group(f"{case.pattern.label} {case.name}", case.dtype)
        try:
            with device_engine(device):
                got = device_compute(
                    [w.to(device) for w in weights], [_on(m, device) for m in prevs], case.pattern.sparsity
                )
        except Exception as error:  # noqa: BLE001 - a failing case, named; the others go on
            out.append(_raised(case.label, group, error))
            continue
        parts = [compare(case.label, "", g, e) for g, e in zip(got, expected)]
        if len(got) != len(expected):
            parts.append(Comparison(case.label, "", 1, -1, -1, "?"))
        out.append(
            Comparison(
                case.label,
                group,
                sum(c.mismatches for c in parts),
                sum(c.kept_device for c in parts),
                sum(c.kept_reference for c in parts),
                parts[0].device if parts else "?",
            )
        )
    return out


def mask_rows(comparisons: Sequence[Comparison], device: torch.device, section: str = "masks") -> list[Row]:
    """One row per pattern and dtype; the first failing cases named in the row's data."""
    rows = []
    counts = group_counts([(c.group, c.equal and c.device.startswith(device.type)) for c in comparisons])
    for group, (passed, total) in counts.items():
        failing = [c for c in comparisons if c.group == group and not c.equal]
        rows.append(
            check_row(
                section,
                f"{group}: device mask == CPU engine",
                passed,
                total,
                failing=[c.describe() for c in failing[:20]],
                elsewhere=[c.label for c in comparisons if c.group == group and not c.device.startswith(device.type)],
            )
        )
    return rows


# ---------------------------------------------------------------- counting synchronisations


SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


@dataclass
class Syncs:
    """Host waits inside one call: warnings of ``torch.cuda.set_sync_debug_mode("warn")`` and the
    synchronising CUDA runtime calls the profiler recorded (less those of an empty call)."""

    debug_mode: int | None
    profiler: int | None
    note: str = ""

    @property
    def total(self) -> int | None:
        """The larger count of the two (None: not counted)."""
        known = [n for n in (self.debug_mode, self.profiler) if n is not None]
        return max(known) if known else None


_profiler_baseline: dict[str, int] = {}  # device -> synchronising calls the profiler records around nothing


def count_syncs(fn: Callable[[], object], device: torch.device, profile: bool = True) -> Syncs:
    """Run ``fn()`` once, counting the host synchronisations it causes on ``device`` (CUDA only)."""
    if device.type != "cuda":
        fn()
        return Syncs(None, None, "no CUDA device: not counted")
    if not profile:
        return Syncs(_debug_mode_syncs(fn, device), None)
    key = str(device)
    try:
        if key not in _profiler_baseline:
            _profiler_baseline[key] = _profiled(lambda: None, device)[1]
        prof = _start_profiler()
    except Exception as error:  # noqa: BLE001 - no CUPTI: the debug mode still counts
        return Syncs(_debug_mode_syncs(fn, device), None, f"profiler unavailable: {error}")
    try:
        debug = _debug_mode_syncs(fn, device)
    finally:
        prof.stop()
    try:
        return Syncs(debug, _sync_calls(prof) - _profiler_baseline[key])
    except Exception as error:  # noqa: BLE001 - no events recorded: the debug mode counted
        return Syncs(debug, None, f"profiler events unavailable: {error}")


def _debug_mode_syncs(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)  # outside the counted window
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


def _start_profiler() -> profile:
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    prof.start()
    return prof


def _sync_calls(prof: profile) -> int:
    return sum(1 for e in prof.events() if e.name in SYNC_CALLS)


def _profiled(fn: Callable[[], object], device: torch.device) -> tuple[int, int]:
    """(debug-mode warnings, synchronising runtime calls) of one ``fn()`` under the profiler."""
    prof = _start_profiler()
    try:
        debug = _debug_mode_syncs(fn, device)
    finally:
        prof.stop()
    return debug, _sync_calls(prof)


# ---------------------------------------------------------------- Prune on the device


def scenario_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Layers of every kind the pruner reads differently (no forward: ``prune()`` needs none).
    ``conv`` is stored channels-last (a non-contiguous weight: the CPU kernel does not walk it)."""
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "conv": nn.Conv2d(16, 70, 3),  # rows of 16: 2:4 banks
            "pw": nn.Conv2d(70, 127, 1),  # rows of 70 = 64 + tail 6
            "up": nn.ConvTranspose2d(127, 24, 2),  # out channels on dim 1
            "fc": nn.Linear(200, 100),  # rows of 200 = 3 x 64 + tail 8
            "head": nn.Linear(100, 10),
        }
    ).to(dtype)
    # torch's Module.to overloads omit the documented memory_format
    model["conv"].to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


SCENARIO_DICT = {
    "conv.weight": {"sparsity": 0.5, "bank_size": 4},
    "pw.weight": {"sparsity": 0.9, "bank_size": 64},
    "up.weight": {"sparsity": 0.8, "balance": "none"},
    "fc.weight": {"sparsity": 0.9375, "bank_size": 64},
    "head.weight": {"sparsity": 0.7, "balance": "global"},
    **{f"{layer}.bias": {"sparsity": 0.5, "balance": "global"} for layer in ("conv", "pw", "up", "fc", "head")},
}


class Schedule(TypedDict):
    """The ``Prune`` schedule arguments of the scenario."""

    pretrain_step: int
    sparse_step: int
    frequency: int


SCHEDULE: Schedule = {"pretrain_step": 1, "sparse_step": 6, "frequency": 2}
STEPS = 10


def _bits(t: Tensor) -> Tensor:
    """The raw bits of a float tensor (so ``+0.0`` and ``-0.0`` differ), contiguous, on the CPU."""
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()]
    return t.detach().cpu().contiguous().view(ints)


def _perturb(step: int, reference: nn.Module, others: Sequence[nn.Module]) -> None:
    """A training step's worth of change (it revives pruned weights), the same bits everywhere."""
    g = torch.Generator().manual_seed(1000 + step)
    params = [dict(m.named_parameters()) for m in others]
    with torch.no_grad():
        for name, p in reference.named_parameters():
            new = (p.float() + 0.05 * torch.randn(p.shape, generator=g)).to(p.dtype)
            p.copy_(new)
            for other in params:
                other[name].copy_(new)


@dataclass
class PruneRun:
    """One device pruner followed step by step against the CPU reference."""

    label: str
    prune_device: str
    steps: int = 0
    mask_mismatch_steps: list[int] = field(default_factory=list)
    weight_mismatch_steps: list[int] = field(default_factory=list)
    wrong_device: list[str] = field(default_factory=list)  # masks not where prune_device puts them
    not_pinned: list[str] = field(default_factory=list)  # host masks of GPU weights outside pinned memory
    syncs_plain: list[int | None] = field(default_factory=list)  # per step without refresh (masks applied)
    syncs_refresh: list[int | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _follow(
    run: PruneRun,
    step: int,
    device_prune: Prune,
    ref: Prune,
    device: torch.device,
    dev_model: nn.Module,
    ref_model: nn.Module,
) -> None:
    """Compare one device pruner with the reference after ``step``."""
    got, expected = device_prune.masks(), ref.masks()
    if any(not torch.equal(got[n].cpu(), expected[n]) for n in expected):
        run.mask_mismatch_steps.append(step)
    dev_params = dict(dev_model.named_parameters())
    if any(not torch.equal(_bits(dev_params[n]), _bits(p)) for n, p in ref_model.named_parameters()):
        run.weight_mismatch_steps.append(step)
    want = "cpu" if run.prune_device == "cpu" else device.type
    for name, mask in device_prune._masks.items():  # the pruner's own storage, None before pruning
        if mask is None:
            continue
        if mask.device.type != want:
            run.wrong_device.append(f"step {step} {name}: {mask.device}")
        if device.type == "cuda" and mask.device.type == "cpu" and not mask.is_pinned():
            run.not_pinned.append(f"step {step} {name}")


def _prune_step(run: PruneRun, prune: Prune, device: torch.device, profile: bool) -> None:
    step = prune.step + 1
    refresh = is_refresh_step(step, SCHEDULE["pretrain_step"], SCHEDULE["sparse_step"], SCHEDULE["frequency"])
    has_masks = any(m is not None for m in prune._masks.values())
    syncs = count_syncs(prune.prune, device, profile=profile)
    if syncs.note and syncs.note not in run.notes:
        run.notes.append(syncs.note)
    if refresh:
        run.syncs_refresh.append(syncs.total)
    elif has_masks:
        run.syncs_plain.append(syncs.total)


def follow_training(
    device: torch.device, dtype: torch.dtype, prune_device: str, profile: bool = True, moved: bool = False
) -> PruneRun:
    """``STEPS`` steps of ``SCENARIO_DICT`` on ``device`` weights against the same on the CPU.

    ``moved``: the pruner is built on the CPU model with ``restore_sparsity`` (zeros already there),
    then the model moves to ``device`` (``model.to(device)`` after ``Prune(...)``)."""
    label = f"{str(dtype).removeprefix('torch.')} prune_device={prune_device!r}" + (
        " moved after Prune()" if moved else ""
    )
    run = PruneRun(label, prune_device)
    ref_model = scenario_model(dtype)
    if moved:  # zeros to restore: a quarter of every weight
        with torch.no_grad():
            for p in ref_model.parameters():
                p.masked_fill_(torch.rand(p.shape, generator=torch.Generator().manual_seed(p.numel())) < 0.25, 0)
    dev_model = scenario_model(dtype)
    dev_model.load_state_dict(ref_model.state_dict())
    ref = Prune(ref_model, prune_dict=SCENARIO_DICT, restore_sparsity=moved, **SCHEDULE)
    if not moved:
        dev_model.to(device)
    dev = Prune(dev_model, prune_dict=SCENARIO_DICT, prune_device=prune_device, restore_sparsity=moved, **SCHEDULE)
    if moved:
        dev_model.to(device)
    for step in range(1, STEPS + 1):
        _perturb(step, ref_model, [dev_model])
        ref.prune()
        with device_engine(device):
            if moved and step == 1:  # the masks follow their weights to the device here: not counted
                dev.prune()
            else:
                _prune_step(run, dev, device, profile)
        _follow(run, step, dev, ref, device, dev_model, ref_model)
        run.steps = step
    with device_engine(device):
        checked, sparsity = dev.check(), dev.sparsity()
    if checked != ref.check():
        run.notes.append(f"check() differs: {checked} vs {ref.check()}")
    if sparsity != ref.sparsity():
        run.notes.append(f"sparsity() differs: {sparsity[1]} vs {ref.sparsity()[1]}")
    return run


def state_round_trip(device: torch.device, prune_device: str) -> tuple[bool, str]:
    """A CPU pruner's state loaded into a device pruner: the same masks, where ``prune_device`` puts them;
    and the device pruner's state loaded back on the CPU: the same again."""
    ref_model, dev_model = scenario_model(), scenario_model()
    ref = Prune(ref_model, prune_dict=SCENARIO_DICT, prune_device=prune_device, **SCHEDULE)  # a setting of the state
    for step in range(1, 6):
        _perturb(step, ref_model, [])
        ref.prune()
    dev_model.load_state_dict(ref_model.state_dict())
    dev_model.to(device)
    dev = Prune(dev_model, prune_dict=SCENARIO_DICT, prune_device=prune_device, **SCHEDULE)
    dev.load_state_dict(ref.state_dict())
    back = Prune(scenario_model(), prune_dict=SCENARIO_DICT, prune_device=prune_device, **SCHEDULE)
    back.load_state_dict(dev.state_dict())
    want = "cpu" if prune_device == "cpu" else device.type
    problems = []
    for name, mask in ref.masks().items():
        got = dev.masks()[name]
        if got.device.type != want:
            problems.append(f"{name} on {got.device}")
        if not torch.equal(got.cpu(), mask) or not torch.equal(back.masks()[name], mask):
            problems.append(f"{name} differs")
    return not problems, "; ".join(problems) or "masks equal, on the right device"


def prune_rows(device: torch.device, profile: bool = True) -> list[Row]:
    """The ``prune_device`` section: every scenario against the CPU, and the syncs of each step."""
    rows = []
    runs = [
        follow_training(device, dtype, prune_device, profile)
        for dtype in (torch.float32, torch.bfloat16)
        for prune_device in ("default", "cpu")
    ]
    runs += [follow_training(device, torch.float32, pd, profile, moved=True) for pd in ("default", "cpu")]
    for run in runs:
        problems: dict[str, Sequence[object]] = {
            "masks differ at steps": run.mask_mismatch_steps,
            "weights differ (bits) at steps": run.weight_mismatch_steps,
            "masks on the wrong device": run.wrong_device,
            "host masks not pinned": run.not_pinned,
        }
        failed = {k: v for k, v in problems.items() if v}
        notes = [n for n in run.notes if "differs" in n]
        rows.append(
            Row(
                "prune_device",
                f"{run.label}: masks and weights == CPU run, {run.steps} steps",
                "equal"
                if not failed and not notes
                else "; ".join([*(f"{k} {v[:5]}" for k, v in failed.items()), *notes]),
                ok=not failed and not notes,
                data={"problems": failed, "notes": run.notes},
            )
        )
        plain = run.syncs_plain
        if device.type == "cuda":
            counted = [n for n in plain if n is not None]
            rows.append(
                Row(
                    "prune_device",
                    f"{run.label}: host syncs in prune() without refresh ({len(plain)} steps)",
                    f"{sum(counted)} (per step {plain}); refresh steps {run.syncs_refresh}",
                    ok=len(counted) == len(plain) > 0 and sum(counted) == 0,
                    data={"plain": plain, "refresh": run.syncs_refresh, "notes": run.notes},
                )
            )
        else:
            rows.append(info_row("prune_device", f"{run.label}: host syncs", "not counted: no CUDA device"))
    for prune_device in ("default", "cpu"):
        ok, detail = state_round_trip(device, prune_device)
        rows.append(
            Row("prune_device", f"state_dict CPU -> device -> CPU, prune_device={prune_device!r}", detail, ok=ok)
        )
    return rows
