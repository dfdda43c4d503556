"""Never slower by default: ``to_bank_sparse(model, prune)`` with default arguments, whole models and
their layers, against the masked dense model, from one interleaved run per thread count.

For each model the dense weights are pruned one-shot, bank-balanced (bank 64) at ``--sparsity``
(default 93.75 % and 90 %), and a copy is converted with the default rule (this machine's calibration,
measured at first use for the thread count in force). Then:

- whole model: dense ÷ converted time, median of interleaved rounds: the check is that no converted
  model is slower (ratio below ``1 - NOISE``: a miss; a model with nothing converted is the dense model
  and is not timed);
- every converted layer: its measured speedup (dense layer ÷ bank-sparse layer on the input it gets in
  the model's forward pass, the fastest of 15 interleaved rounds, as the calibration times) against
  the report's expected one from the calibration at that input's size: the check is
  ``|expected / measured - 1| <= 0.3``. Each layer is timed in two sweeps; how often the two agree
  within 30 % is this machine's own limit on that check;
- the converted layers together: the sum of their modelled dense times ÷ the sum of their modelled
  bank-sparse times against the same sums measured (the first sweep), within 30 %.

    python -m pruning_tools.benchmarks.default_rule                          # every model, 1 and 2 threads
    python -m pruning_tools.benchmarks.default_rule --threads 1 --model linear --rounds 5 --json out.json
"""

from __future__ import annotations

import copy
import functools
import json
import statistics
import time
import warnings
from collections.abc import Callable

import click
import torch
from torch import nn

from pruning_tools import _native
from pruning_tools.atomic import write_text
from pruning_tools.benchmarks.harness import header, interleaved
from pruning_tools.benchmarks.inference import pruned
from pruning_tools.benchmarks.models import bert_encoder, resnet50
from pruning_tools.inference import calibration, convert, to_bank_sparse

NOISE = 0.03  # a whole-model ratio within 3 % of 1 is the noise of these machines, not a slowdown
TOLERANCE = 0.3  # expected within 30 % of measured
LAYER_ROUNDS = 15  # interleaved rounds per layer: fewer left the fastest at 2 threads varying ±50 % run to run


# ---------------------------------------------------------------- the models of the check


class BasicBlock(nn.Module):
    """torchvision's ResNet-18 block: 3x3 -> 3x3, projection shortcut when shapes change."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, inplanes, H, W] -> [N, planes, H / s, W / s]
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def resnet18() -> nn.Module:
    """torchvision's ResNet-18 layout (names included), 1000 classes."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(True),
        nn.MaxPool2d(3, 2, 1),
    ]
    inplanes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)]
        inplanes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def trained_looking(model: nn.Module) -> nn.Module:
    """Norm statistics and affine parameters that look trained (a zero-initialised one would hide work)."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
            if m.running_mean is not None and m.running_var is not None:
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def linear_model(in_features: int, out_features: int) -> nn.Module:
    """A fresh ``nn.Sequential(nn.Linear(in_features, out_features))``."""
    return nn.Sequential(nn.Linear(in_features, out_features))


def hf_block(kind: str) -> nn.Module:
    """Two blocks of a Hugging Face GPT-2 / BERT / Llama at d 256 (built from a config, no download)."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "gpt2":
        return tf.GPT2Model(tf.GPT2Config(n_embd=256, n_layer=2, n_head=4, vocab_size=1000, n_positions=256)).eval()
    if kind == "bert":
        config = tf.BertConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
                               vocab_size=1000, max_position_embeddings=256)  # fmt: skip
        return tf.BertModel(config).eval()
    llama = tf.LlamaConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=704,
                           vocab_size=1000, max_position_embeddings=256)  # fmt: skip
    return tf.LlamaModel(llama).eval()


def models(chosen: set[str]) -> list[tuple[str, Callable[[], nn.Module], object]]:
    """``(name, build, input)`` of every model of the check that ``chosen`` names."""
    out: list[tuple[str, Callable[[], nn.Module], object]] = []
    if "linear" in chosen:
        for o, i in ((768, 3072), (3072, 768)):
            for rows in (1, 8, 16, 64, 256):
                build = functools.partial(linear_model, i, o)
                out.append((f"Linear {o}x{i}, {rows} rows", build, torch.randn(rows, i)))
    if "bert" in chosen:
        out.append(
            ("BERT-base nn.TransformerEncoder, 1 x 128", lambda: bert_encoder().eval(), torch.randn(1, 128, 768))
        )
    if "hf" in chosen:
        tokens = torch.randint(0, 1000, (1, 128))
        for kind in ("gpt2", "bert", "llama"):
            out.append(
                (f"HF {kind} (d 256, 2 blocks), 1 x 128", functools.partial(hf_block, kind), {"input_ids": tokens})
            )
    if "resnet18" in chosen:
        out.append(("ResNet-18, batch 1, 224²", lambda: trained_looking(resnet18()), torch.randn(1, 3, 224, 224)))
    if "resnet50" in chosen:
        out.append(("ResNet-50, batch 1, 224²", lambda: trained_looking(resnet50()), torch.randn(1, 3, 224, 224)))
    return out


MODELS = ("linear", "bert", "hf", "resnet18", "resnet50")


# ---------------------------------------------------------------- the check


def _run(model: nn.Module, x: object) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return convert._call(model, x)

    return run


def _layer_speedup(
    module: nn.Module, new: nn.Module, args: tuple, kwargs: dict, n: int, stored: int
) -> tuple[float, float]:
    """(dense, bank-sparse) seconds per call of one layer on its input, timed as the calibration times:
    the fastest of interleaved rounds."""
    with torch.no_grad():
        calls = max(1, min(50, int(2e6 / max(1, n * stored))))
        return calibration._times(
            convert._bound(module, args, kwargs), convert._bound(new, args, kwargs), LAYER_ROUNDS, calls, budget_s=1.0
        )


def _within(expected: float, measured: float) -> bool:
    return abs(expected / measured - 1) <= TOLERANCE


def check_layers(dense: nn.Module, fast: nn.Module, report: convert.ConversionReport, x: object) -> dict:
    """Every converted layer's expected speedup against its measured one, each layer timed twice (a second
    sweep after the first: how far two measurements of the same layer agree is this machine's noise), and
    the converted layers together (sum of dense times ÷ sum of bank-sparse times, modelled and measured)."""
    inputs = convert._record_inputs(dense, [dense.get_submodule(n) for n in report.converted], x)
    rule = calibration.calibration()
    cases = []
    for layer in report.layers:
        module = dense.get_submodule(layer.name) if layer.converted else None
        if module is not None and id(module) in inputs:
            args, kwargs, n = inputs[id(module)]
            modelled = convert.modelled_at_input(rule, module, layer, args, kwargs, n)
            cases.append((layer, module, fast.get_submodule(layer.name), args, kwargs, n, modelled))
    sweeps = [[_layer_speedup(m, new, a, k, n, layer.stored) for layer, m, new, a, k, n, _ in cases] for _ in range(2)]
    layers = []
    for (layer, *_, n, modelled), first, second in zip(cases, *sweeps, strict=True):
        expected, measured, again = modelled[0] / modelled[1], first[0] / first[1], second[0] / second[1]
        layers.append({"name": layer.name, "n": n, "expected": expected, "measured": measured, "again": again,
                       "modelled_ns": modelled, "measured_s": first, "again_s": second,
                       "within": _within(expected, measured), "repeat_within": _within(again, measured)})  # fmt: skip
    together: dict = {}
    if layers:
        total = [sum(layer[key][i] for layer in layers) for key in ("modelled_ns", "measured_s") for i in (0, 1)]
        together = {"expected": total[0] / total[1], "measured": total[2] / total[3]}
        together["within"] = _within(together["expected"], together["measured"])
    return {"layers": layers, "together": together}


def check_model(name: str, build: Callable[[], nn.Module], x: object, sparsity: float, rounds: int) -> dict:
    """One model at one sparsity at the current thread count: the whole-model ratio and every layer's."""
    torch.manual_seed(0)
    dense = build()
    prune = pruned(dense, sparsity)
    fast = copy.deepcopy(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = to_bank_sparse(fast, prune.state_dict())  # the default rule
    row: dict = {"model": name, "sparsity": sparsity, "threads": torch.get_num_threads(), "layers": [],
                 "converted": f"{len(report.converted)} of {len(report.layers)}", "together": {}}  # fmt: skip
    if not report.converted:
        row["whole"], row["verdict"] = None, "nothing converted: the dense model"
        return row
    timings = interleaved({"dense": _run(dense, x), "converted": _run(fast, x)}, rounds, warmup=1, rotate=True)
    row["whole"] = timings["dense"].median / timings["converted"].median
    row["verdict"] = "slower" if row["whole"] < 1 - NOISE else "not slower"
    row.update(check_layers(dense, fast, report, x))
    return row


def summary(rows: list[dict]) -> str:
    lines = ["| model | threads | sparsity | converted | dense ÷ converted | verdict | layers within 30 % | "
             "expected ÷ measured, median (min-max) | layers together: expected ÷ measured | "
             "same layer timed twice: within 30 % |",
             "|---|---:|---:|---|---:|---|---:|---|---:|---:|"]  # fmt: skip
    for r in rows:
        whole = "" if r["whole"] is None else f"{r['whole']:.2f}x"
        ratios = [layer["expected"] / layer["measured"] for layer in r["layers"]]
        spread = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else ""
        n = len(r["layers"])
        within = f"{sum(layer['within'] for layer in r['layers'])} of {n}" if n else ""
        repeat = f"{sum(layer['repeat_within'] for layer in r['layers'])} of {n}" if n else ""
        t = r["together"]
        together = f"{t['expected']:.2f}x ÷ {t['measured']:.2f}x = {t['expected'] / t['measured']:.2f}" if t else ""
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['sparsity']:.2%} | {r['converted']} | {whole} | {r['verdict']} | "
            f"{within} | {spread} | {together} | {repeat} |"
        )
    return "\n".join(lines)


@click.command()
@click.option("--threads", "threads", multiple=True, type=click.IntRange(1), default=(1, 2), show_default=True)
@click.option("--model", "chosen", multiple=True, type=click.Choice(MODELS), default=MODELS, show_default=True)
@click.option("--sparsity", "sparsities", multiple=True, type=float, default=(0.9375, 0.9), show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=5, show_default=True, help="Whole-model interleaved rounds.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def main(threads, chosen, sparsities, rounds, json_path) -> None:
    """Default-argument conversion: never slower, expected within 30 % of measured."""
    rows: list[dict] = []
    previous = torch.get_num_threads()
    started = time.perf_counter()
    title = header("benchmarks/default_rule.py", max(threads))
    title += f"; ISA {_native.isa.chosen()} (CPU runs {', '.join(_native.isa.supported())}); bank 64; fp32"
    print(title)
    try:
        for t in threads:
            torch.set_num_threads(t)
            rule = calibration.calibration()
            print(f"{t} thread(s): calibration {rule.seconds:.2f} s when measured; per call dense "
                  f"{rule.dense_call_us:.1f} µs, bank-sparse {rule.sparse_call_us:.1f} µs")  # fmt: skip
            for name, build, x in models(set(chosen)):
                for sparsity in sparsities:
                    row = check_model(name, build, x, sparsity, rounds)
                    rows.append(row)
                    print(summary([row]).splitlines()[-1], flush=True)
    finally:
        torch.set_num_threads(previous)
    slower = [r for r in rows if r["verdict"] == "slower"]
    layers = [layer for r in rows for layer in r["layers"]]
    print("\n" + summary(rows))
    together = [r["together"] for r in rows if r["together"]]
    print(f"\n{len(slower)} of {len(rows)} conversions slower than dense; "
          f"{sum(layer['within'] for layer in layers)} of {len(layers)} layers' expected speedups within 30 % "
          f"of measured (the same layer timed twice: {sum(layer['repeat_within'] for layer in layers)} of "
          f"{len(layers)} within 30 % of each other); converted layers together within 30 %: "
          f"{sum(t['within'] for t in together)} of {len(together)} conversions; "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    if json_path:
        write_text(json_path, json.dumps({"header": title, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
