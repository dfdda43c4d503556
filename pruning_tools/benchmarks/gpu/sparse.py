"""Sparse products on the device: 2:4 weights through PyTorch's semi-structured sparse tensors, and
the library's ``BankSparseLinear`` (bank 64), against the masked dense ``F.linear``.

2:4 is the library's bank-balanced mask with ``bank_size=4`` at 50 % (``masks.bank_mask``), along
the rows of a ``[out, in]`` weight: exactly the groups of four ``torch.sparse.to_sparse_semi_structured``
compresses. Each backend (CUTLASS, cuSPARSELt) is probed first: where the GPU or the build does not
support it, the report says so with PyTorch's own error. Speed is ``dense time ÷ sparse time`` from
one interleaved run per weight (above 1: sparse is faster), reported whichever way it falls.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning_tools.benchmarks.gpu.cost import device_task
from pruning_tools.benchmarks.gpu.report import Row, check_row, info_row
from pruning_tools.benchmarks.harness import interleaved, paired_ratio
from pruning_tools.inference import BankSparseLinear
from pruning_tools.masks import bank_mask

BERT_SHAPES = {  # [out, in]
    "BERT-base attention": (768, 768),
    "BERT-base FFN up": (3072, 768),
    "BERT-base FFN down": (768, 3072),
}
LLM_SHAPES = {
    "Llama-2-7B attention": (4096, 4096),
    "Llama-2-7B MLP up": (11008, 4096),
    "Llama-2-7B MLP down": (4096, 11008),
    "Llama-2-70B attention": (8192, 8192),
    "Llama-2-70B MLP up": (28672, 8192),
}
BATCHES = (1, 16, 256)
DTYPES = (torch.float16, torch.bfloat16)

Convert = Callable[[Tensor], Tensor]  # a 2:4 dense weight -> a tensor F.linear multiplies with


def _semi_structured(cutlass: bool) -> Convert:
    def convert(w: Tensor) -> Tensor:
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

        previous = SparseSemiStructuredTensor._FORCE_CUTLASS
        SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "prototype stage" notice
                return to_sparse_semi_structured(w)
        finally:
            SparseSemiStructuredTensor._FORCE_CUTLASS = previous

    return convert


def semi_structured_backends(device: torch.device) -> tuple[dict[str, Convert], dict[str, str]]:
    """``({backend: convert}, {backend: why it cannot serve})`` for this device, each probed with a
    small 2:4 product (compression, then ``F.linear``) against the dense one."""
    candidates = {"CUTLASS": _semi_structured(cutlass=True), "cuSPARSELt": _semi_structured(cutlass=False)}
    if device.type != "cuda":
        return {}, {name: "needs a CUDA device" for name in candidates}
    usable, refused = {}, {}
    for name, convert in candidates.items():
        if name == "cuSPARSELt" and not torch.backends.cusparselt.is_available():
            refused[name] = "torch.backends.cusparselt.is_available() is False"
            continue
        try:
            w = two_four(torch.randn(128, 128, device=device, dtype=torch.float16))
            x = torch.randn(16, 128, device=device, dtype=torch.float16)
            F.linear(x, convert(w))
            torch.cuda.synchronize(device)
            usable[name] = convert
        except Exception as error:  # noqa: BLE001 - reported: unsupported GPU or build
            refused[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return usable, refused


def two_four(w: Tensor) -> Tensor:
    """``w`` with the library's 2:4 mask applied (bank 4 at 50 %, along the rows)."""
    return w * bank_mask(w, None, 0.5, bank_size=4)


def errors(got: Tensor, dense: Tensor, ref: Tensor) -> tuple[float, float, float]:
    """``(max |got - ref|, max |dense - ref|, max |ref|)``: a sparse product and the dense one against
    a reference in higher precision (so the sparse product is judged by the dense one's own rounding)."""
    ref = ref.double()
    return float((got.double() - ref).abs().max()), float((dense.double() - ref).abs().max()), float(ref.abs().max())


def close_enough(err: float, dense_err: float, scale: float, dtype: torch.dtype) -> bool:
    """As accurate as the dense product, within a factor 2 and one unit of ``dtype`` at the output's scale."""
    return err <= 2 * dense_err + torch.finfo(dtype).eps * scale


@dataclass
class ShapeResult:
    """One weight shape through one backend: exact round trip, outputs close per batch, speedups."""

    exact: bool
    close: dict[int, bool]
    detail: dict[int, str]
    speedup: dict[int, float]  # dense time / sparse time, per batch


def one_shape(
    device: torch.device,
    convert: Convert,
    dtype: torch.dtype,
    shape: tuple[int, int],
    batches: Sequence[int],
    rounds: int,
    repeat: int,
) -> ShapeResult:
    """A 2:4 weight ``[out, in]`` of ``dtype`` through ``convert``: decompressed, multiplied, timed."""
    out_f, in_f = shape
    g = torch.Generator(device=device).manual_seed(out_f * 7 + in_f)  # generated where used: LLM sizes
    w = two_four(torch.randn(out_f, in_f, generator=g, device=device, dtype=dtype))  # [out, in]
    ws = convert(w)
    exact = torch.equal(ws.to_dense() if ws is not w else w, w)
    xs = {b: torch.randn(b, in_f, generator=g, device=device, dtype=dtype) for b in batches}  # [batch, in]
    close, detail, tasks = {}, {}, {}
    for b, x in xs.items():
        ref = F.linear(x.float(), w.float())  # products of halves are exact in float32
        err, dense_err, scale = errors(F.linear(x, ws), F.linear(x, w), ref)
        close[b] = close_enough(err, dense_err, scale, dtype)
        detail[b] = f"error {err:.3g} vs dense {dense_err:.3g} (scale {scale:.3g})"
        tasks[f"dense {b}"] = device_task(partial(F.linear, x, w), device, repeat)
        tasks[f"sparse {b}"] = device_task(partial(F.linear, x, ws), device, repeat)
    timings = interleaved(tasks, rounds, rotate=True)
    speedup = {b: paired_ratio(timings[f"dense {b}"], timings[f"sparse {b}"]) for b in batches}
    return ShapeResult(exact, close, detail, speedup)


def semi_rows(
    device: torch.device,
    shapes: Mapping[str, tuple[int, int]],
    backends: Mapping[str, Convert],
    dtypes: Sequence[torch.dtype] = DTYPES,
    batches: Sequence[int] = BATCHES,
    rounds: int = 10,
    repeat: int = 20,
    section: str = "2:4",
) -> list[Row]:
    """For each backend and dtype: the sparse outputs against the masked dense ones (one row), the
    compressed weights decompressed (exact), per weight shape the speed at every batch size, and a
    summary. A shape the backend refuses is named in a row of its own and the others go on."""
    rows: list[Row] = []
    for backend, convert in backends.items():
        for dtype in dtypes:
            name = f"{backend} {str(dtype).removeprefix('torch.')}"
            results: dict[str, ShapeResult] = {}
            refused: list[str] = []
            for label, shape in shapes.items():
                key = f"{label} {list(shape)}"
                try:
                    results[key] = one_shape(device, convert, dtype, shape, batches, rounds, repeat)
                except Exception as error:  # noqa: BLE001 - a backend refusing a shape: reported
                    refused.append(f"{key}: {type(error).__name__}: {str(error)[:200]}")
            close = [(f"{key} batch {b}", ok, r.detail[b]) for key, r in results.items() for b, ok in r.close.items()]
            failing = [f"{what}: {detail}" for what, ok, detail in close if not ok]
            rows.append(
                check_row(
                    section,
                    f"{name}: F.linear outputs == masked dense (tolerance)",
                    sum(ok for _, ok, _ in close),
                    len(close),
                    failing=failing,
                )
            )
            exact = sum(r.exact for r in results.values())
            rows.append(check_row(section, f"{name}: compressed weights decompress exactly", exact, len(results)))
            rows += [info_row(section, f"{name}: not run", why) for why in refused]
            rows += [
                info_row(
                    section,
                    f"{name} {key}: speed vs dense F.linear",
                    ", ".join(f"batch {b} {r:.2f}x" for b, r in result.speedup.items()),
                    speedup=result.speedup,
                )
                for key, result in results.items()
            ]
            ratios = [r for result in results.values() for r in result.speedup.values()]
            if ratios:
                faster = sum(r > 1 for r in ratios)
                rows.append(
                    info_row(
                        section,
                        f"{name}: summary",
                        f"faster than dense in {faster}/{len(ratios)} (shape, batch) pairs; "
                        f"from {min(ratios):.2f}x to {max(ratios):.2f}x",
                    )
                )
    return rows


def bank_sparse_rows(
    device: torch.device,
    shapes: Mapping[str, tuple[int, int]] = BERT_SHAPES,
    batches: Sequence[int] = BATCHES,
    rounds: int = 10,
    repeat: int = 10,
) -> list[Row]:
    """``BankSparseLinear`` (bank 64 at 93.75 %, float32) moved to ``device``: outputs equal the masked
    dense ``nn.Linear`` (within float32 rounding), and its speed against it."""
    rows: list[Row] = []
    passed, total, failing = 0, 0, []
    speed: dict[str, dict[int, float]] = {}
    for label, (out_f, in_f) in shapes.items():
        torch.manual_seed(out_f + in_f)
        fc = nn.Linear(in_f, out_f)
        with torch.no_grad():
            fc.weight.mul_(bank_mask(fc.weight, None, 0.9375))  # keep 4 of every 64
        sparse = BankSparseLinear.from_linear(fc).to(device)
        fc.to(device)
        xs = {b: torch.randn(b, in_f, device=device) for b in batches}
        tasks = {}
        with torch.no_grad():
            for b, x in xs.items():
                want, got = fc(x), sparse(x)
                ref = F.linear(x.double(), fc.weight.double(), fc.bias.double())
                total += 1
                if got.shape == want.shape and close_enough(*errors(got, want, ref), torch.float32):
                    passed += 1
                else:
                    failing.append(f"{label} batch {b}")
                tasks[f"dense {b}"] = device_task(partial(fc, x), device, repeat)
                tasks[f"bank {b}"] = device_task(partial(sparse, x), device, repeat)
            timings = interleaved(tasks, rounds, rotate=True)
        speed[f"{label} [{out_f}, {in_f}]"] = {
            b: paired_ratio(timings[f"dense {b}"], timings[f"bank {b}"]) for b in batches
        }
    rows.append(
        check_row("bank-sparse", "BankSparseLinear outputs == masked dense nn.Linear", passed, total, failing=failing)
    )
    rows += [
        info_row(
            "bank-sparse",
            f"BankSparseLinear {label}: speed vs dense nn.Linear",
            ", ".join(f"batch {b} {r:.2f}x" for b, r in ratios.items()),
            speedup=ratios,
        )
        for label, ratios in speed.items()
    ]
    return rows
