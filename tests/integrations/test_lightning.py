"""PruneCallback in a Lightning Trainer: a tiny Llama with accumulate_grad_batches=2, bank-balanced
at the target, logged with self.log, resumed from a checkpoint mid-ramp with the same masks and step
as an uninterrupted run; both package names (lightning.pytorch, pytorch_lightning)."""

from __future__ import annotations

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")
pytest.importorskip("transformers")

from pruning_tools import check_banks  # noqa: E402
from pruning_tools.integrations.lightning import PruneCallback  # noqa: E402
from tests import launch  # noqa: E402
from tests.tiny_transformers import tiny_llama, token_data  # noqa: E402

BATCHES_PER_EPOCH, ACCUMULATE, EPOCHS = 8, 2, 4  # 4 optimizer steps per epoch, 16 in all
TARGET, BANK = 0.75, 16


class LanguageModel(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = tiny_llama()

    def training_step(self, batch, batch_idx):
        loss = self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)

    def train_dataloader(self):
        data = token_data(4 * BATCHES_PER_EPOCH, labels="lm")
        return torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)


def prune_dict(module: LanguageModel) -> dict:
    return {n: TARGET for n, p in module.named_parameters() if p.dim() > 1 and ".layers." in n}


def fit(tmp_path, ckpt_path=None, epochs=EPOCHS, trainer_module=L):
    module = LanguageModel()
    callback = PruneCallback(2, 12, 3, prune_dict(module), bank_size=BANK)  # ramp over steps 3..14
    checkpoints = trainer_module.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "checkpoints", every_n_epochs=1, save_top_k=-1
    )
    trainer = trainer_module.Trainer(
        max_epochs=epochs,
        accumulate_grad_batches=ACCUMULATE,
        callbacks=[callback, checkpoints],
        logger=trainer_module.loggers.CSVLogger(tmp_path, name="logs"),
        log_every_n_steps=2,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return module, callback, trainer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lightning")
    L.seed_everything(0)
    return tmp_path, *fit(tmp_path)


def test_one_prune_per_optimizer_step_and_balanced(uninterrupted):
    _, module, callback, trainer = uninterrupted
    prune = callback.prune
    assert trainer.global_step == EPOCHS * BATCHES_PER_EPOCH // ACCUMULATE == prune.step == 16
    assert prune.check()[1]
    layers, total = prune.sparsity()
    assert set(layers.values()) == {TARGET} and total == TARGET
    for name in prune.config.params:
        assert check_banks(module.get_parameter(name), BANK, sparsity=TARGET).balanced


def test_sparsity_is_logged(uninterrupted):
    tmp_path, _, callback, trainer = uninterrupted
    assert trainer.callback_metrics["sparsity"] == pytest.approx(TARGET)
    name = next(iter(callback.prune.config.params))
    assert trainer.callback_metrics[f"sparsity/{name}"] == pytest.approx(TARGET)
    lines = next((tmp_path / "logs").rglob("metrics.csv")).read_text().splitlines()
    assert "sparsity" in lines[0].split(",")


def test_resume_mid_ramp_gives_the_same_masks_and_step(uninterrupted, tmp_path):
    first, module, callback, _ = uninterrupted
    checkpoint = first / "checkpoints" / "epoch=1-step=8.ckpt"  # after 2 of 4 epochs: mid-ramp
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # plain data, no pickle code
    assert [v["step"] for k, v in state["callbacks"].items() if "PruneCallback" in k] == [8]
    L.seed_everything(0)
    resumed_module, resumed, trainer = fit(tmp_path, ckpt_path=checkpoint)
    assert trainer.global_step == resumed.prune.step == callback.prune.step
    expected = callback.prune.masks()
    assert all(torch.equal(mask, expected[name]) for name, mask in resumed.prune.masks().items())
    for (name, p), q in zip(module.named_parameters(), resumed_module.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), name


def test_resuming_a_checkpoint_without_the_pruner_is_an_error(uninterrupted, tmp_path):
    first, *_ = uninterrupted
    state = torch.load(first / "checkpoints" / "epoch=1-step=8.ckpt", map_location="cpu", weights_only=True)
    state["callbacks"] = {k: v for k, v in state["callbacks"].items() if "PruneCallback" not in k}
    torch.save(state, tmp_path / "dense.ckpt")
    with pytest.raises(RuntimeError, match="pruner is at step 0 but the trainer at global step 8"):
        fit(tmp_path, ckpt_path=tmp_path / "dense.ckpt")


def test_the_callback_serves_pytorch_lightning_too(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    assert isinstance(PruneCallback(0, 2, 1, {"*.weight": 0.5}), pl.Callback)

    class Module(pl.LightningModule):  # the same model under the other package name
        training_step = LanguageModel.training_step
        configure_optimizers = LanguageModel.configure_optimizers
        train_dataloader = LanguageModel.train_dataloader

        def __init__(self):
            super().__init__()
            self.model = tiny_llama()

    module = Module()
    callback = PruneCallback(0, 2, 1, prune_dict(module), bank_size=BANK)
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    assert callback.prune.step == 4 and callback.prune.sparsity()[1] == TARGET


def test_ddp_on_two_processes(tmp_path):
    """torchrun, 2 CPU processes, gloo (strategy="ddp"): both ranks prune once per optimizer step to
    the same masks, 4 of every 16 weights kept."""
    from pathlib import Path

    from safetensors import safe_open

    launch.torchrun(Path(__file__).with_name("lightning_ddp.py"), str(tmp_path))
    ranks = []
    for rank in (0, 1):
        with safe_open(str(tmp_path / f"masks-{rank}.safetensors"), "pt") as f:
            ranks.append(({k: f.get_tensor(k).bool() for k in f.keys()}, f.metadata()["step"]))
    (first, step), (second, other_step) = ranks
    assert step == other_step == "8" and sorted(first) == ["net.0.weight", "net.2.weight"]
    for name, mask in first.items():
        assert torch.equal(mask, second[name])
        assert (mask.reshape(mask.shape[0], -1, 16).sum(dim=-1) == 4).all()
