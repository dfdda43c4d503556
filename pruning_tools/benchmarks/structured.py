"""Structured pruning: how much faster a shrunk model is, and Torch-Pruning side by side.

One interleaved run per thread count (``harness.interleaved``), medians and paired ratios against the
unpruned model in the same run:

- ResNet-50 (torchvision layout, 224 x 224) with 50 % of every convolution's output channels removed:
  eager and onnxruntime, the unpruned model in each as the base; Torch-Pruning's ``MagnitudePruner``
  at the same ratio beside it (when ``torch_pruning`` is installed).
- BERT-base (Hugging Face ``BertModel`` from its default config: 12 layers, 768 wide, 12 heads,
  FFN 3072; 128 tokens) with 50 % of heads and MLP neurons removed (``round_to=64``); and that
  shrunk model pruned again bank-balanced at 87.5 % (bank 64) and converted with ``to_bank_sparse``.

Also: parameters and MACs before and after, the wall time of each pruning call, and which of the
test architectures (``structured_models`` and the Hugging Face ones) each library handles.
``--quick``: tiny sizes, one round: checks that everything runs; its ratios mean nothing.
"""

from __future__ import annotations

import copy
import importlib.util
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from pruning_tools import Prune, shrink, to_bank_sparse
from pruning_tools.onnx import export_onnx

from .harness import Task, header, interleaved, load_average, ort_options, paired_ratio
from .models import resnet50


def _quiet_prune(model: nn.Module, prune_dict: dict, **kwargs: Any) -> Prune:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune = Prune(model, 0, 0, 1, prune_dict, **kwargs)
    prune.prune()
    return prune


def shrink_resnet(model: nn.Module, example: Tensor, fraction: float = 0.5) -> tuple[nn.Module, float, Any]:
    """A copy of ``model`` with ``fraction`` of every convolution's channels removed; (model, seconds, report)."""
    model = copy.deepcopy(model).eval()
    convs = {f"{n}.weight": fraction for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    started = time.perf_counter()
    prune = _quiet_prune(model, convs, structure="channel", example_inputs=(example,))
    report = shrink(model, prune)
    return model, time.perf_counter() - started, report


def torch_pruning_resnet(model: nn.Module, example: Tensor, fraction: float = 0.5) -> tuple[nn.Module, float] | None:
    """Torch-Pruning's magnitude pruner (L2 group importance) at the same ratio, or None when not installed."""
    if importlib.util.find_spec("torch_pruning") is None:
        return None
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    started = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=fraction,
        ignored_layers=[model.fc],
    )  # fmt: skip
    pruner.step()
    return model, time.perf_counter() - started


def bert_base(quick: bool) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig() if not quick else transformers.BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512
    )  # fmt: skip
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def shrink_bert(model: nn.Module, ids: Tensor) -> tuple[nn.Module, float, Any]:
    """Half the heads and MLP neurons of every layer removed (``round_to=64``)."""
    model = copy.deepcopy(model)
    targets = {f"*.{n}.weight": 0.5 for n in ("query", "key", "value")} | {"*.intermediate.dense.weight": 0.5}
    started = time.perf_counter()
    prune = _quiet_prune(model, targets, structure="channel", example_inputs=(ids,), round_to=64)
    report = shrink(model, prune)
    return model, time.perf_counter() - started, report


def bank_sparse(model: nn.Module, ids: Tensor, sparsity: float = 0.875) -> tuple[nn.Module, Any]:
    """A copy pruned bank-balanced (bank 64) at ``sparsity`` in every encoder Linear, converted."""
    model = copy.deepcopy(model)
    linears = {f"{n}.weight": sparsity for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    prune = _quiet_prune(model, linears, balance="fix", bank_size=64)
    report = to_bank_sparse(model, prune, min_speedup=0.01, min_weights=0)
    return model, report


def _ort_session(model: nn.Module, inputs: tuple, path: str, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    export_onnx(model, inputs, path)
    session = ort.InferenceSession(path, ort_options(threads), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return lambda: session.run(None, feeds)


def _eager(model: nn.Module, *inputs: Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(*inputs)

    return run


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(quick: bool, threads: tuple[int, ...] = (1, 2), rounds: int | None = None, tmp: str = "/tmp") -> dict:
    """Every measurement above; returns plain data (``header``, ``rows``, ``pruning``, ``handles``)."""
    rounds = rounds or (1 if quick else 5)
    title = header("structured pruning benchmark" + (" --quick" if quick else ""), threads[0])
    size, width = (64, 8) if quick else (224, 64)
    tokens = 16 if quick else 128
    resnet = resnet50(width=width).eval()
    image = torch.randn(1, 3, size, size)
    shrunk_resnet, our_seconds, resnet_report = shrink_resnet(resnet, image)
    theirs = torch_pruning_resnet(resnet, image)
    bert = bert_base(quick)
    ids = torch.randint(0, 1000, (1, tokens))
    shrunk_bert, bert_seconds, bert_report = shrink_bert(bert, ids)
    both, conversion = bank_sparse(shrunk_bert, ids)
    pruning = {
        "resnet50": {
            "params": [resnet_report.params_before, resnet_report.params_after],
            "macs": [resnet_report.macs_before, resnet_report.macs_after],
            "seconds": our_seconds,
        },
        "bert_base": {
            "params": [bert_report.params_before, bert_report.params_after],
            "macs": [bert_report.macs_before, bert_report.macs_after],
            "seconds": bert_seconds,
            "converted": len(conversion.converted),
        },
    }
    if theirs is not None:
        pruning["resnet50_torch_pruning"] = {"params": [_count(resnet), _count(theirs[0])], "seconds": theirs[1]}
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for batch in (1, 8):
            x = image.expand(batch, -1, -1, -1).contiguous()
            tasks: dict[str, Task | Callable[[], object]] = {
                "resnet50 dense eager": _eager(resnet, x),
                "resnet50 shrunk eager": _eager(shrunk_resnet, x),
                "resnet50 dense onnxruntime": _ort_session(resnet, (x,), f"{tmp}/r_dense.onnx", t),
                "resnet50 shrunk onnxruntime": _ort_session(shrunk_resnet, (x,), f"{tmp}/r_shrunk.onnx", t),
            }
            if theirs is not None:
                tasks["resnet50 torch-pruning eager"] = _eager(theirs[0], x)
            b = ids.expand(batch, -1).contiguous()
            tasks |= {
                "bert dense eager": _eager(bert, b),
                "bert shrunk eager": _eager(shrunk_bert, b),
                "bert shrunk + bank-sparse 87.5%": _eager(both, b),
            }
            timings = interleaved(tasks, rounds, warmup=1, rotate=True)
            for name, timing in timings.items():
                family, _, variant = name.partition(" ")
                runtime = "onnxruntime" if "onnxruntime" in name else "eager"
                base = timings[f"{family} dense {runtime}"]
                rows.append({
                    "task": name, "threads": t, "batch": batch, "median_ms": 1e3 * timing.median,
                    "speedup": 1.0 / paired_ratio(timing, base), "base": base.task,
                })  # fmt: skip
    return {
        "header": f"{title}; load average at the end {load_average()}",
        "threads": list(threads),
        "rounds": rounds,
        "rows": rows,
        "pruning": pruning,
        "handles": handles(),
    }


def handles() -> dict[str, dict[str, str]]:
    """Per test architecture, what each library does with it at 50 %: "ok (params before -> after)",
    or the error. Ours: shrunk output equal to the masked output; Torch-Pruning: its pruned model runs."""
    from . import structured_models as Z

    models: dict[str, tuple[Callable[[], nn.Module], Tensor]] = {
        "ResNet-18": (lambda: Z.ResNet18(width=8), torch.randn(1, 3, 32, 32)),
        "ResNet-50": (lambda: resnet50(width=8, num_classes=10, blocks=(2, 1, 1, 1)), torch.randn(1, 3, 32, 32)),
        "MobileNetV2": (Z.MobileNetV2, torch.randn(1, 3, 32, 32)),
        "DenseNet block": (Z.DenseNet, torch.randn(1, 3, 16, 16)),
        "VGG + flatten": (Z.VGG, torch.randn(1, 3, 16, 16)),
        "ViT (hand-written attention)": (Z.ViT, torch.randn(1, 3, 16, 16)),
        "ViT (nn.MultiheadAttention)": (lambda: Z.ViT(builtin=True), torch.randn(1, 3, 16, 16)),
    }
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        ids = torch.randint(0, 100, (1, 8))
        common: dict[str, Any] = {"vocab_size": 100, "max_position_embeddings": 32}
        models |= {
            "HF BERT": (lambda: transformers.BertModel(transformers.BertConfig(hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, **common)), ids),
            "HF GPT-2": (lambda: transformers.GPT2Model(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4,
                         n_positions=32, vocab_size=100)), ids),
            "HF Llama (GQA)": (lambda: transformers.LlamaModel(transformers.LlamaConfig(hidden_size=64,
                               intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, **common)), ids),
        }  # fmt: skip
    out: dict[str, dict[str, str]] = {}
    for name, (build, x) in models.items():
        out[name] = {"pruning_tools": _ours(build, x), "torch_pruning": _theirs(build, x)}
    return out


def _first(out: object) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return _first(out[0])  # type: ignore[index]


def _ours(build: Callable[[], nn.Module], x: Tensor) -> str:
    torch.manual_seed(0)
    model = build().eval()
    before = _count(model)
    try:
        prune = _quiet_prune(model, {"*": 0.5}, structure="channel", example_inputs=(x,))
        with torch.no_grad():
            masked = _first(model(x))
        report = shrink(model, prune)
        with torch.no_grad():
            err = float((_first(model(x)) - masked).abs().max() / masked.abs().max())
    except Exception as error:  # a capability table: every failure is a row
        return f"fails: {type(error).__name__}: {str(error)[:80]}"
    heads = sum(g.units_before != g.channels_before for g in report.groups)
    return f"ok: params {before:,} -> {_count(model):,}, {heads} head groups, max rel err {err:.1e}"


def _theirs(build: Callable[[], nn.Module], x: Tensor) -> str:
    if importlib.util.find_spec("torch_pruning") is None:
        return "not installed"
    import torch_pruning as tp

    torch.manual_seed(0)
    model = build().eval()
    before = _count(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outputs = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features in (10, 100)]
            pruner = tp.pruner.MagnitudePruner(
                model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                ignored_layers=outputs,
            )  # fmt: skip
            pruner.step()
            with torch.no_grad():
                _first(model(x))
    except Exception as error:  # a capability table: every failure is a row
        return f"fails: {type(error).__name__}: {str(error)[:80]}"
    return f"runs: params {before:,} -> {_count(model):,}"


def to_markdown(result: dict) -> str:
    lines = [result["header"], "", "| task | threads | batch | median ms | speedup vs dense (same runtime) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['task']} | {r['threads']} | {r['batch']} | {r['median_ms']:.1f} | {r['speedup']:.2f}x |")
    lines += ["", "| pruning | params before -> after | MACs before -> after | seconds |", "|---|---|---|---|"]
    for name, p in result["pruning"].items():
        macs = " -> ".join(f"{m / 1e6:,.0f} M" for m in p["macs"]) if "macs" in p else "not counted"
        params = " -> ".join(f"{n / 1e6:.2f} M" for n in p["params"])
        lines.append(f"| {name} | {params} | {macs} | {p['seconds']:.2f} |")
    lines += ["", "| model (50 %) | pruning_tools | torch_pruning |", "|---|---|---|"]
    for name, h in result["handles"].items():
        lines.append(f"| {name} | {h['pruning_tools']} | {h['torch_pruning']} |")
    return "\n".join(lines) + "\n"
