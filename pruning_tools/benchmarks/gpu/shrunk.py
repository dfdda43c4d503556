"""Structured pruning on the device: a shrunk model computes the masked one's outputs there, and how
much faster it runs than the unpruned model (interleaved, paired ratios; ``device_task`` syncs).

ResNet-50 (224 x 224) with 50 % of every convolution's channels removed, and BERT-base (Hugging Face,
128 tokens) with 50 % of heads and MLP neurons removed (``round_to=64``), in the device's half
precision under ``torch.autocast``, at batch 1 and 64 (``quick``: tiny models, batch 1 and 4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from pruning_tools.benchmarks import structured as S
from pruning_tools.benchmarks.gpu.cost import device_task
from pruning_tools.benchmarks.gpu.report import Row, info_row
from pruning_tools.benchmarks.harness import interleaved, paired_ratio
from pruning_tools.benchmarks.models import resnet50

SECTION = "shrunk"


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.autocast(device.type, dtype=dtype) if device.type == "cuda" else contextlib.nullcontext()


def _call(model: nn.Module, x: Tensor, device: torch.device) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode(), _autocast(device):
            return model(x)

    return run


def _first(out: object) -> Tensor:
    return out if isinstance(out, Tensor) else out.last_hidden_state  # type: ignore[attr-defined]


def shrunk_rows(device: torch.device, quick: bool = False) -> list[Row]:
    """Rows: shrunk == masked on the device (float32), then speed ratios against the unpruned model."""
    size, width, batches = (32, 8, (1, 4)) if quick else (224, 64, (1, 64))
    rounds = 2 if quick else 10
    resnet = resnet50(width=width).eval()
    image = torch.randn(1, 3, size, size)
    shrunk_resnet, _, report = S.shrink_resnet(resnet, image)
    bert = S.bert_base(quick)
    ids = torch.randint(0, 1000, (1, 16 if quick else 128))
    shrunk_bert, _, bert_report = S.shrink_bert(bert, ids)
    ratios = [(r.params_after / r.params_before, r.macs_after / r.macs_before) for r in (report, bert_report)]
    rows = [
        info_row(SECTION, f"{label}: params, MACs", f"{p:.3f}x, {m:.3f}x of the unpruned model")
        for label, (p, m) in zip(("ResNet-50 50 %", "BERT-base 50 % heads + MLP"), ratios)
    ]
    for model in (resnet, shrunk_resnet, bert, shrunk_bert):
        model.to(device)
    x, t = image.to(device), ids.to(device)
    with torch.inference_mode():  # the shrunk CPU-built model on the device: same outputs as it had on the CPU
        cpu_ref = _first(shrunk_resnet.cpu()(image))
        shrunk_resnet.to(device)
        err = float((shrunk_resnet(x).cpu() - cpu_ref).abs().max() / cpu_ref.abs().max())
    rows.append(Row(SECTION, "shrunk ResNet-50 on the device = on the CPU (float32)", f"max rel err {err:.1e}",
                    ok=err <= 1e-3, goal="<= 1e-3"))  # fmt: skip
    for batch in batches:
        xb, tb = x.expand(batch, -1, -1, -1).contiguous(), t.expand(batch, -1).contiguous()
        tasks = {
            "resnet dense": device_task(_call(resnet, xb, device), device),
            "resnet shrunk": device_task(_call(shrunk_resnet, xb, device), device),
            "bert dense": device_task(_call(bert, tb, device), device),
            "bert shrunk": device_task(_call(shrunk_bert, tb, device), device),
        }
        timings = interleaved(tasks, rounds, warmup=2, rotate=True)
        for family, label in (("resnet", "ResNet-50 50 %"), ("bert", "BERT-base 50 % heads + MLP")):
            speedup = 1.0 / paired_ratio(timings[f"{family} shrunk"], timings[f"{family} dense"])
            ms = 1e3 * timings[f"{family} shrunk"].median
            rows.append(info_row(SECTION, f"{label} shrunk, batch {batch}", f"{speedup:.2f}x the unpruned model "
                                 f"({ms:.2f} ms)", speedup=speedup))  # fmt: skip
    return rows
