"""The language-model demo: its vendored corpus, the GPT, the runs of the table and the command, tiny."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from pruning_tools import integrity
from pruning_tools.cli import main
from pruning_tools.demo.lm import experiments as X
from pruning_tools.demo.lm.app import run_lm_demo
from pruning_tools.demo.lm.data import ARCHIVE, fixed_windows, load_corpus, split_of, verify
from pruning_tools.demo.lm.model import GPT, GPTConfig, block_weights
from pruning_tools.pruner import read_state_file
from pruning_tools.pytorch_pruning import Prune

from ..conftest import REPO

DATA = REPO / "data" / "python-docs"
TINY = GPTConfig(layers=2, d_model=32, heads=2, context=32)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(DATA)


def test_the_vendored_corpus_is_real_checked_and_split_by_document(corpus):
    assert corpus.train.numel() + corpus.valid.numel() + corpus.test.numel() > 10_000_000  # >= 5 MB of text
    assert corpus.documents == {"train": 439, "valid": 34, "test": 24}
    assert b"Python" in bytes(corpus.test[:100000].tolist()) and corpus.train.dtype == torch.uint8
    assert (DATA / ARCHIVE).stat().st_size < 10 * 2**20
    readme = (DATA / "README.md").read_text()
    assert "PSF" in readme and "3.11.2-6+deb12u8" in readme and "SHA256SUMS" in readme
    assert split_of("_sources/library/os.rst.txt") == split_of("_sources/library/os.rst.txt")


def test_a_damaged_archive_is_refused(tmp_path):
    shutil.copy(DATA / "SHA256SUMS", tmp_path / "SHA256SUMS")
    data = bytearray((DATA / ARCHIVE).read_bytes())
    data[1000] ^= 1
    (tmp_path / ARCHIVE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="differs from .* the file is damaged"):
        verify(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not hold the LM corpus"):
        load_corpus(tmp_path / "nowhere")


def test_gpt_shapes_and_context_limit():
    model = GPT(TINY)
    assert model(torch.zeros(3, 32, dtype=torch.long)).shape == (3, 32, 256)
    assert block_weights(model) == [
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    ]
    with pytest.raises(ValueError, match="tokens of length 33 is not allowed"):
        model(torch.zeros(1, 33, dtype=torch.long))
    assert fixed_windows(torch.arange(100, dtype=torch.uint8), 33).shape == (3, 33)


def test_the_runs_of_the_table_on_a_tiny_model(corpus):
    small = corpus.head(60000)
    dense_result, dense = X.run_dense(small, TINY, X.with_steps(X.DENSE, 4), eval_bytes=2000)
    state = dense.state_dict()
    assert dense_result["kind"] == "dense" and dense_result["test"]["perplexity"] > 1 and dense_result["sparsity"] == 0
    for method in ("magnitude", "wanda", "sparsegpt"):
        result, model = X.run_oneshot(small, TINY, state, method, "2:4", eval_bytes=2000, sequences=4)
        assert result["sparsity"] == 0.5 and result["oneshot"]["mode"] == "chained blocks"
        assert all(layer["balanced"] for layer in result["oneshot"]["layers"].values())
    result, _ = X.run_gradual(
        small, TINY, state, "fix", 0.9375, "movement", recipe=X.with_steps(X.CONTINUED, 6), eval_bytes=2000
    )
    assert result["sparsity"] == 0.9375 and result["balanced"] and result["settings"]["criterion"] == "movement"
    result, _ = X.run_gradual(small, TINY, state, "none", 0.0, recipe=X.with_steps(X.CONTINUED, 2), eval_bytes=2000)
    assert result["kind"] == "dense-continued" and result["sparsity"] == 0
    result, model = X.run_oneshot_finetune(
        small, TINY, state, "bank-64 75%", recipe=X.with_steps(X.FINETUNE, 3), eval_bytes=2000
    )
    assert result["sparsity"] == pytest.approx(0.75) and result["balanced"]
    json.dumps(result)
    spread = X.feature_norm_spread(small, TINY, state, sequences=2)
    assert set(spread) == set(block_weights(GPT(TINY))) and all(v["max_over_median"] >= 1 for v in spread.values())


def test_run_lm_demo_tiny(corpus, tmp_path):
    result = run_lm_demo(
        DATA, sparsity=0.5, bank_size=4, steps=5, limit=40000, config=TINY, sequences=4, eval_bytes=2000
    )
    assert set(result["perplexity"]) == {"dense", "oneshot", "finetune"} and result["balanced"]
    assert result["total_sparsity"] == 0.5 and result["settings"]["finetune_recipe"]["steps"] == 1
    prune = Prune(GPT(TINY), 0, 0, 1, X.prune_dict(GPT(TINY), "fix", 4, 0.5), restore_sparsity=True)
    prune.load_state_dict(result["pruner_state"])


def test_demo_task_lm_command(tmp_path):
    out = tmp_path / "lm"
    args = ["demo", "--task", "lm", "--limit", "6000", "--steps", "2", "--calibration", "2", "--data", str(DATA)]
    result = CliRunner().invoke(main, [*args, "--sparsity", "0.5", "--bank-size", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "oneshot   test perplexity" in result.output and "chained blocks" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "lm" and results["total_sparsity"] == 0.5 and "weights" not in results
    assert set(read_state_file(out / "pruner_state.safetensors")["masks"]) == set(results["layer_sparsity"])
    check = CliRunner().invoke(
        main, ["inspect", str(out / "weights.safetensors"), "--match", "blocks.*.weight", "--require-balanced"]
    )
    assert check.exit_code == 0, check.output
    assert f"wrote {out / 'weights.safetensors'}" in " ".join(result.output.split())
    again = CliRunner().invoke(main, [*args, "--sparsity", "0.5", "--bank-size", "4", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert f"replaced {out / 'results.json'} (it existed before)" in " ".join(again.output.split())
    for name in ("weights.safetensors", "dense_weights.safetensors", "pruner_state.safetensors"):
        integrity.load_file(out / name, framework="pt")  # checksums present and verified
        with safe_open(str(out / name), "pt") as f:
            assert integrity.CHECKSUM_KEY in (f.metadata() or {}), name


def test_demo_task_lm_checks_its_output_directory_before_training(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    args = ["demo", "--task", "lm", "--limit", "6000", "--steps", "2", "--data", str(DATA)]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "file" / "lm")])
    assert result.exit_code == 2 and "is a file, not a directory" in result.output
    assert "dense" not in result.output  # nothing trained


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "lm", "--epochs", "2"], "--epochs: not an option of --task lm"),
        (["--task", "lm", "--framework", "mxnet"], "--framework: not an option of --task lm"),
        (["--method", "wanda"], "--method is an option of --task lm"),
        (["--task", "lm", "--data", "/nonexistent"], "no LM corpus in /nonexistent/"),
    ],
)
def test_demo_task_lm_bad_options(args, message):
    result = CliRunner().invoke(main, ["demo", *args])
    assert result.exit_code == 2 and message in result.output


def test_results_script_prints_the_table_from_the_json_files():
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "lm_results.py"), "--table"], capture_output=True, text=True, check=True
    ).stdout
    assert "| one-shot | unstructured 50% | 2:4 | 4:8 | bank-64 50% | bank-64 75% |" in out
    assert "| sparsegpt |" in out and "bank-64, movement" in out
