"""PruneCallback in a Hugging Face Trainer: tiny BERT (gradient accumulation) and tiny GPT-2 (Conv1D),
bank-balanced at the target, resumed from a checkpoint mid-ramp with the same masks and step as an
uninterrupted run; under DDP on 2 CPU processes (gloo, torchrun)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import Trainer, TrainingArguments  # noqa: E402

from pruning_tools import check_banks  # noqa: E402
from pruning_tools.integrations.transformers import STATE_FILE, PruneCallback  # noqa: E402
from pruning_tools.pruner import pruned_specs  # noqa: E402
from tests.tiny_transformers import tiny_bert, tiny_gpt2, token_data  # noqa: E402

from .. import launch

STEPS, SAVE_AT = 16, 8  # the ramp runs over steps 3..14, so checkpoint-8 is mid-ramp


def bert_prune_dict(model) -> dict:
    return {n: 0.75 for n, p in model.named_parameters() if p.dim() > 1 and ".encoder." in n}


def gpt2_prune_dict(model) -> dict:
    return {"*.c_attn.weight": 0.875, "*.c_fc.weight": 0.875, "*.c_proj.weight": 0.875}  # Conv1D weights


CASES = {  # model, prune_dict of its parameters, bank size, target, gradient accumulation, labels
    "bert": (tiny_bert, bert_prune_dict, 16, 0.75, 2, "class"),
    "gpt2": (tiny_gpt2, gpt2_prune_dict, 16, 0.875, 1, "lm"),
}


def run(case: str, out: Path, resume=None, callback_hook=None):
    make, prune_dict, bank, _, accumulation, labels = CASES[case]
    model = make()
    callback = PruneCallback(2, 12, 3, prune_dict(model), bank_size=bank)
    if callback_hook:
        callback_hook(callback)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-3,
        save_steps=SAVE_AT,
        logging_steps=4,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=token_data(64, labels=labels), callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return model, callback, trainer


@pytest.fixture(scope="module", params=sorted(CASES))
def uninterrupted(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return request.param, out, *run(request.param, out)


def test_bank_balanced_at_the_target(uninterrupted):
    case, _, model, callback, trainer = uninterrupted
    _, _, bank, target, _, _ = CASES[case]
    prune = callback.prune
    assert prune.step == trainer.state.global_step == STEPS  # optimizer steps, not batches
    assert prune.check()[1]
    layers, total = prune.sparsity()
    assert set(layers.values()) == {target} and total == target
    for name, spec in prune.config.params.items():
        assert spec.out_dim == (1 if case == "gpt2" else 0)  # Conv1D: banks along the input dim
        assert check_banks(model.get_parameter(name), bank, out_dim=spec.out_dim, sparsity=target).balanced


def test_sparsity_is_in_the_trainers_logs(uninterrupted):
    case, _, _, callback, trainer = uninterrupted
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [4, 8, 12, 16]
    assert [entry["sparsity"] for entry in logged] == sorted(entry["sparsity"] for entry in logged)
    assert logged[-1]["sparsity"] == CASES[case][3]
    name = next(iter(callback.prune.config.params))
    assert logged[-1][f"sparsity/{name}"] == CASES[case][3]


def test_every_checkpoint_holds_the_pruner_state(uninterrupted):
    case, out, *_ = uninterrupted
    for step in (SAVE_AT, STEPS):
        specs = pruned_specs(out / f"checkpoint-{step}" / STATE_FILE)  # what export reads its geometry from
        assert specs and all(s.out_dim == (1 if case == "gpt2" else 0) for s in specs.values())


def test_resume_mid_ramp_gives_the_same_masks_and_step(uninterrupted, tmp_path):
    case, out, model, callback, _ = uninterrupted
    if case == "bert":  # the usual way: resume_from_checkpoint=True in the run's output_dir
        shutil.copytree(out / f"checkpoint-{SAVE_AT}", tmp_path / f"checkpoint-{SAVE_AT}")
        resumed_model, resumed, _ = run(case, tmp_path, resume=True)
    else:  # a checkpoint folder from elsewhere, named to the callback with resume_from
        folder = tmp_path / "elsewhere"
        shutil.copytree(out / f"checkpoint-{SAVE_AT}", folder)
        resumed_model, resumed, _ = run(
            case, tmp_path / "out", resume=str(folder), callback_hook=lambda c: c.resume_from(folder)
        )
    assert resumed.prune.step == callback.prune.step == STEPS
    expected = callback.prune.masks()
    assert all(torch.equal(mask, expected[name]) for name, mask in resumed.prune.masks().items())
    for (name, p), q in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), name


def test_resuming_without_a_pruner_state_is_an_error(uninterrupted, tmp_path):
    case, out, *_ = uninterrupted
    folder = tmp_path / f"checkpoint-{SAVE_AT}"
    shutil.copytree(out / f"checkpoint-{SAVE_AT}", folder)
    (folder / STATE_FILE).unlink()
    with pytest.raises(RuntimeError, match=rf"resuming at step {SAVE_AT}.*{STATE_FILE} does not exist.*resume_from"):
        if case == "bert":
            run(case, tmp_path, resume=True)
        else:
            run(case, tmp_path / "out", resume=str(folder), callback_hook=lambda c: c.resume_from(folder))


def test_bad_arguments_fail_at_construction():
    with pytest.raises(TypeError, match=r"unknown options \['bank'\]"):
        PruneCallback(0, 10, 2, {"*.weight": 0.5}, bank=16)
    with pytest.raises(ValueError, match="frequency=0"):
        PruneCallback(0, 10, 0, {"*.weight": 0.5})
    with pytest.raises(ValueError, match="prune_dict"):
        PruneCallback(0, 10, 2, {})
    prune_dict = {"*.weight": 0.5}
    callback = PruneCallback(0, 10, 2.0, prune_dict)
    prune_dict["*.weight"] = 0.9  # the callback keeps its own copy
    assert callback.arguments["prune_dict"] == {"*.weight": 0.5} and callback.arguments["frequency"] == 2


def test_ddp_on_two_processes(tmp_path):
    """torchrun, 2 CPU processes, gloo: masks equal on both ranks, balanced; a resumed run equals the
    uninterrupted one; only the main process writes the state."""
    from safetensors import safe_open

    launch.torchrun(Path(__file__).with_name("trainer_ddp.py"), str(tmp_path))

    def masks(run: str, rank: int) -> tuple[dict, str]:
        with safe_open(str(tmp_path / f"masks-{run}-{rank}.safetensors"), "pt") as f:
            return {k: f.get_tensor(k).bool() for k in f.keys()}, f.metadata()["step"]

    reference, step = masks("run", 0)
    assert step == "8" and len(reference) == 12
    for run_name, rank in (("run", 1), ("resumed", 0), ("resumed", 1)):
        other, other_step = masks(run_name, rank)
        assert other_step == step and all(torch.equal(other[k], reference[k]) for k in reference), (run_name, rank)
    for mask in reference.values():
        assert (mask.reshape(mask.shape[0], -1, 16).sum(dim=-1) == 4).all()  # 4 of every 16: 0.75
    assert (tmp_path / "run" / "checkpoint-4" / STATE_FILE).is_file()
