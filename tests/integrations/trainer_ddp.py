"""One rank of a Hugging Face Trainer run with PruneCallback under DDP: ``torchrun --nproc_per_node=2
tests/integrations/trainer_ddp.py OUT``. Trains 8 steps in ``OUT/run`` (checkpoints at 4 and 8), then
resumes a copy of ``checkpoint-4`` in ``OUT/resumed``; each rank writes the masks of both runs to
``OUT/masks-<run>-<rank>.safetensors``."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.tiny_transformers

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from pruning_tools.integrations.transformers import PruneCallback  # noqa: E402
from tests.tiny_transformers import tiny_bert, token_data  # noqa: E402


def train(out: Path, resume: bool) -> PruneCallback:
    model = tiny_bert()
    prune_dict = {n: 0.75 for n, p in model.named_parameters() if p.dim() > 1 and ".encoder." in n}
    callback = PruneCallback(2, 4, 2, prune_dict, bank_size=16)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_steps=4,
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo",
        seed=0,
        disable_tqdm=True,
        logging_steps=4,
    )
    trainer = Trainer(model=model, args=args, train_dataset=token_data(32), callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume or None)
    assert type(trainer.model_wrapped).__name__ == "DistributedDataParallel", type(trainer.model_wrapped)
    return callback


def save_masks(callback: PruneCallback, path: Path) -> None:
    masks = {name: m.to(torch.uint8) for name, m in callback.prune.masks().items()}
    save_file(masks, str(path), metadata={"step": str(callback.prune.step)})


def main(out: Path) -> None:
    uninterrupted = train(out / "run", resume=False)
    rank = torch.distributed.get_rank()
    save_masks(uninterrupted, out / f"masks-run-{rank}.safetensors")
    if rank == 0:
        shutil.copytree(out / "run" / "checkpoint-4", out / "resumed" / "checkpoint-4")
    torch.distributed.barrier()
    resumed = train(out / "resumed", resume=True)
    save_masks(resumed, out / f"masks-resumed-{rank}.safetensors")
    # closed before exit: gloo's threads left to the interpreter's shutdown once aborted a rank
    # ("terminate called without an active exception")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
