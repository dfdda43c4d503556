"""The language-model demo's GPT with 50 % of its attention heads and MLP neurons removed, then shrunk.

    python scripts/lm_structured.py            # both runs, results in docs/results/structured_lm_*.json

Starts from the dense model of ``scripts/lm_results.py`` (``runs/lm/dense.safetensors``; trained here
first when missing, with the same recipe). Two runs, one seed each, the same recipes as the
bank-balanced rows of the README's language-model table:

- gradual: ``Prune(structure="channel")`` on the cubic schedule during the 500 steps of continued
  training (ramp 60 %, refresh every 20 steps), then ``shrink``;
- one-shot then fine-tune: ``oneshot(..., method="flap", structure="channel")`` on 128 calibration
  sequences, ``shrink``, then the 200-step fine-tune of the shrunk (dense, smaller) model.

Each result has the test and validation perplexity of the masked and the shrunk model, the block
weights' parameter counts before and after, and the wall time.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from pruning_tools import Prune, oneshot, shrink  # noqa: E402
from pruning_tools.demo.lm import experiments as X  # noqa: E402
from pruning_tools.demo.lm.data import load_corpus  # noqa: E402
from pruning_tools.demo.lm.model import GPTConfig, block_weights  # noqa: E402
from pruning_tools.demo.lm.trainer import calibration, evaluate, train  # noqa: E402

FRACTION = 0.5


def targets(model: torch.nn.Module) -> dict[str, float]:
    """Half the heads (through the fused qkv projection) and half the MLP neurons of every block."""
    return {n: FRACTION for n in block_weights(model) if n.endswith(("attn.qkv.weight", "mlp.fc.weight"))}


def block_params(model: torch.nn.Module) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in block_weights(model))


def measure(model: torch.nn.Module, corpus) -> dict:
    return {split: evaluate(model, getattr(corpus, split))["perplexity"] for split in ("test", "valid")}


def gradual(corpus, config: GPTConfig, dense: dict) -> dict:
    started = time.perf_counter()
    model = X.from_state(config, dense)
    before = block_params(model)
    recipe = X.CONTINUED
    ramp = max(1, round(X.RAMP * recipe.steps))
    example = (corpus.train[: config.context].view(1, -1).long(),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune = Prune(model, 0, ramp, X.FREQUENCY, targets(model), structure="channel", example_inputs=example)
    train(model, corpus, recipe, prune=prune)
    masked = measure(model, corpus)
    report = shrink(model, prune)
    return {
        "kind": "gradual structured", "fraction": FRACTION, "recipe": recipe.to_dict(), "masked": masked,
        "shrunk": measure(model, corpus), "block_params": [before, block_params(model)],
        "params": [report.params_before, report.params_after], "report": str(report),
        "seconds": time.perf_counter() - started,
    }  # fmt: skip


def oneshot_finetune(corpus, config: GPTConfig, dense: dict) -> dict:
    started = time.perf_counter()
    model = X.from_state(config, dense)
    before = block_params(model)
    batches = calibration(corpus.train, X.CALIBRATION, config.context)
    report = oneshot(model, batches, targets(model), method="flap", structure="channel")
    masked = measure(model, corpus)
    shrunk = shrink(model, report.prune)
    after_oneshot = measure(model, corpus)
    train(model, corpus, X.FINETUNE)  # the shrunk model: dense and smaller, no masks needed
    return {
        "kind": "oneshot flap + finetune", "fraction": FRACTION, "recipe": X.FINETUNE.to_dict(),
        "masked": masked, "shrunk_before_finetune": after_oneshot, "shrunk": measure(model, corpus),
        "compensated": report.compensated, "block_params": [before, block_params(model)],
        "params": [shrunk.params_before, shrunk.params_after], "report": str(shrunk),
        "seconds": time.perf_counter() - started,
    }  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    corpus = load_corpus(ROOT / "data" / "python-docs")
    config = GPTConfig()
    dense_path = ROOT / "runs" / "lm" / "dense.safetensors"
    if not dense_path.exists():
        print("dense", flush=True)
        _, model = X.run_dense(corpus, config)
        dense_path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dense_path))
    dense = load_file(str(dense_path))
    out = ROOT / "docs" / "results"
    for name, run in (("gradual", gradual), ("oneshot_finetune", oneshot_finetune)):
        print(name, flush=True)
        result = run(corpus, config, dense)
        (out / f"structured_lm_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"  test ppl masked {result['masked']['test']:.4f} shrunk {result['shrunk']['test']:.4f}", flush=True)


if __name__ == "__main__":
    main()
