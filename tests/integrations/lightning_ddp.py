"""One rank of a Lightning fit with PruneCallback under DDP: ``torchrun --nproc_per_node=2
tests/integrations/lightning_ddp.py OUT``. Each rank writes its masks to ``OUT/masks-<rank>.safetensors``."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from safetensors.torch import save_file

from pruning_tools.integrations.lightning import PruneCallback


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main(out: Path) -> None:
    L.seed_everything(0)
    module = Classifier()
    data = torch.utils.data.TensorDataset(torch.randn(128, 64), torch.randint(0, 10, (128,)))
    callback = PruneCallback(2, 6, 2, {"net.0.weight": 0.75, "net.2.weight": 0.75}, bank_size=16)
    trainer = L.Trainer(
        max_steps=8,
        accumulate_grad_batches=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    masks = {name: m.to(torch.uint8) for name, m in callback.prune.masks().items()}
    save_file(masks, str(out / f"masks-{trainer.global_rank}.safetensors"), metadata={"step": str(callback.prune.step)})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
