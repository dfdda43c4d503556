"""ResNet-50 on ImageNet, pruned to 93.75 % bank-balanced sparsity from a dense checkpoint.

One process per GPU with torchrun; DDP; every rank computes the same masks (deterministic
selection on identical weights). Checkpoints hold model + optimizer + LR schedule + pruner, so a
run resumes exactly where it stopped.

    torchrun --nproc_per_node=8 examples/imagenet_resnet50.py --data /data/imagenet \\
        --dense-checkpoint resnet50_dense.pth --out runs/r50_bank64

    # no data at hand: random images, any size (what CI runs on 2 CPU processes)
    torchrun --nproc_per_node=2 examples/imagenet_resnet50.py --synthetic --image-size 32 \\
        --num-classes 10 --base-width 8 --bank-size 8 --max-steps 6 --out runs/smoke

``--data`` is an ImageFolder layout (``train/<class>/<image>``, ``val/<class>/<image>``), read
with Pillow. ``--arch resnet50_v1b`` is torchvision's ResNet-50 (stride in the 3x3 conv; its
state_dict keys match torchvision's, so a torchvision checkpoint loads as the dense start);
``resnet50_v1d`` has the deep stem and average-pool shortcut downsampling.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pruning_tools import Prune
from pruning_tools.atomic import save_torch

# ---------------------------------------------------------------- model (torchvision layout)

# the model zoo of the benchmarks (pruning_tools/benchmarks/models.py): v1b / v1d ResNet-50 in torchvision's layout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pruning_tools.benchmarks.models import ResNet50  # noqa: E402


def prune_dict_for(model: nn.Module, sparsity: float, bank_size: int) -> dict[str, float]:
    """Every conv and linear weight whose bank rows (input channels) hold at least one full bank:
    the RGB stem (3 input channels) stays dense, as a bank of 3 cannot hold a 93.75 % pattern."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.shape[1] >= bank_size:
            out[f"{name}.weight"] = sparsity
    return out


# ---------------------------------------------------------------- data

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>`` read with Pillow; classes sorted by name -> labels 0..C-1.
    Items: ``(float tensor [3, size, size], normalised; int label)``. Training: random resized
    crop (scale 0.08-1, ratio 3/4-4/3) and horizontal flip; evaluation: resize to size / 0.875,
    centre crop."""

    def __init__(self, root: str | Path, size: int = 224, train: bool = True):
        try:
            from PIL import Image
        except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
            raise ImportError("--data needs Pillow to read images: pip install pillow") from e
        self.Image = Image
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"--data: {root} is not a directory (expected <class>/<image> folders)")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.samples = [
            (str(f), label)
            for label, c in enumerate(self.classes)
            for f in sorted((root / c).rglob("*"))
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise FileNotFoundError(f"--data: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}/<class>/")
        self.size, self.train = size, train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with self.Image.open(path) as img:
            img = img.convert("RGB")
            img = self._random_crop(img) if self.train else self._centre_crop(img)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        x = x.view(self.size, self.size, 3).permute(2, 0, 1).float().div_(255)  # [3, size, size]
        if self.train and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - MEAN) / STD, label

    def _random_crop(self, img):
        width, height = img.size
        area = width * height
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(0.08, 1.0))
            ratio = math.exp(float(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3))))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left = int(torch.randint(0, width - w + 1, ()))
                top = int(torch.randint(0, height - h + 1, ()))
                return img.resize((self.size, self.size), self.Image.BILINEAR, box=(left, top, left + w, top + h))
        return self._centre_crop(img)

    def _centre_crop(self, img):
        width, height = img.size
        scale = self.size / 0.875 / min(width, height)
        img = img.resize(
            (max(self.size, round(width * scale)), max(self.size, round(height * scale))), self.Image.BILINEAR
        )
        left, top = (img.size[0] - self.size) // 2, (img.size[1] - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))


class SyntheticImages(torch.utils.data.Dataset):
    """``length`` random images ``[3, size, size]`` with labels; item ``i`` is the same on every
    run and every rank (seeded by ``i``)."""

    def __init__(self, length: int, size: int, num_classes: int, seed: int = 0):
        self.length, self.size, self.num_classes, self.seed = length, size, num_classes, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return torch.randn(3, self.size, self.size, generator=g), int(
            torch.randint(0, self.num_classes, (), generator=g)
        )


class ResumableSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` that can skip the first ``skip`` indices of an epoch (resuming
    mid-epoch without reading the images already trained on)."""

    skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return super().__len__() - self.skip


def loaders(args, rank: int, world: int):
    """Train and validation loaders; each rank reads its own 1 / world of every epoch."""
    if args.synthetic:
        train_set = SyntheticImages(args.synthetic_size, args.image_size, args.num_classes, seed=0)
        val_set = SyntheticImages(
            max(world * args.batch_size, args.synthetic_size // 4), args.image_size, args.num_classes, seed=1
        )
    else:
        train_set = ImageFolder(Path(args.data) / "train", args.image_size, train=True)
        val_set = ImageFolder(Path(args.data) / "val", args.image_size, train=False)
    train_sampler = ResumableSampler(train_set, world, rank, shuffle=True, seed=args.seed, drop_last=True)
    val_sampler = torch.utils.data.DistributedSampler(val_set, world, rank, shuffle=False)
    common = dict(
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=args.workers > 0,
    )
    return (
        torch.utils.data.DataLoader(train_set, sampler=train_sampler, drop_last=True, **common),
        torch.utils.data.DataLoader(val_set, sampler=val_sampler, **common),
        train_sampler,
    )


# ---------------------------------------------------------------- training


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="ImageFolder root with train/ and val/")
    src.add_argument("--synthetic", action="store_true", help="random images instead of --data")
    p.add_argument("--arch", choices=("resnet50_v1b", "resnet50_v1d"), default="resnet50_v1b")
    p.add_argument("--base-width", type=int, default=64, help="channels of the stem (64: the real ResNet-50)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--synthetic-size", type=int, default=1024, help="images per synthetic epoch")
    p.add_argument("--dense-checkpoint", help="dense state_dict to start from (torchvision keys for v1b)")
    p.add_argument("--sparsity", type=float, default=0.9375)
    p.add_argument("--bank-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--prune-start-epoch", type=float, default=0.0, help="dense epochs before the ramp")
    p.add_argument("--prune-epochs", type=float, default=20.0, help="epochs of the cubic ramp to --sparsity")
    p.add_argument("--frequency", type=int, default=200, help="steps between mask refreshes")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=0.01, help="peak LR for a global batch of 256 (scaled linearly)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/imagenet_resnet50", help="checkpoints go here")
    p.add_argument("--resume", help="checkpoint to continue from (default: <out>/last.pt if it exists)")
    p.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (also at each epoch end)")
    p.add_argument("--keep-checkpoints", action="store_true", help="also keep step<N>.pt at every save")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in total (0: all epochs)")
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args(argv)
    for name in (
        "base_width",
        "num_classes",
        "image_size",
        "synthetic_size",
        "bank_size",
        "epochs",
        "frequency",
        "batch_size",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed: expected an integer >= 1")
    if not 0 <= args.sparsity < 1:
        p.error(f"--sparsity={args.sparsity} is not allowed: expected a number in [0, 1)")
    return args


def setup_distributed():
    """(rank, world, device) from torchrun's environment; a single process without it."""
    if "RANK" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return 0, 1, device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def save_checkpoint(out: Path, model, optimizer, scheduler, prune, step: int, args) -> None:
    """``out/last.pt`` (and ``out/step<N>.pt`` with ``--keep-checkpoints``): model + optimizer +
    LR schedule + pruner, plain data (loads with ``weights_only=True``); written, then renamed."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "pruner": prune.state_dict(),
        "step": step,
        "args": vars(args),
    }
    save_torch(state, out / "last.pt")  # temp file + fsync + rename: a failed save keeps the old one
    if args.keep_checkpoints:
        shutil.copyfile(out / "last.pt", out / f"step{step}.pt")


@torch.no_grad()
def evaluate(model, loader, device, world: int) -> float:
    """Top-1 accuracy over the whole validation set (all ranks)."""
    model.eval()
    hits = torch.zeros(2, dtype=torch.float64, device=device)  # [correct, seen]
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        hits += torch.tensor([(model(x).argmax(1) == y).sum().item(), y.numel()], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(hits)
    model.train()
    return float(hits[0] / hits[1].clamp(min=1))


def main(argv=None) -> None:
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    model = ResNet50(args.num_classes, args.arch.split("_")[1], args.base_width)
    if args.dense_checkpoint:
        model.load_state_dict(torch.load(args.dense_checkpoint, map_location="cpu", weights_only=True))
    model.to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model

    train_loader, val_loader, sampler = loaders(args, rank, world)
    steps_per_epoch = len(train_loader)
    total_steps = args.epochs * steps_per_epoch
    lr = args.lr * args.batch_size * world / 256
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() == 1 else decay).append(p)  # no weight decay on BN and biases
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=args.momentum,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(1, total_steps)))
    )
    prune = Prune(
        model,
        round(args.prune_start_epoch * steps_per_epoch),
        round(args.prune_epochs * steps_per_epoch),
        args.frequency,
        prune_dict_for(model, args.sparsity, args.bank_size),
        balance="fix",
        bank_size=args.bank_size,
    )

    step = 0
    resume = args.resume or (str(out / "last.pt") if (out / "last.pt").exists() else None)
    if resume:
        ckpt = torch.load(resume, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        prune.load_state_dict(ckpt["pruner"])
        step = int(ckpt["step"])
        if rank == 0:
            print(f"resumed from {resume} at step {step}", flush=True)

    last_step = min(total_steps, args.max_steps) if args.max_steps else total_steps
    if rank == 0:
        print(
            f"{world} process(es) on {device.type}, {steps_per_epoch} steps/epoch, {total_steps} steps, "
            f"{len(prune.config.params)} pruned tensors to {args.sparsity} (bank {args.bank_size})",
            flush=True,
        )
    tic = time.perf_counter()
    for epoch in range(step // steps_per_epoch, args.epochs):
        if step >= last_step:
            break
        sampler.set_epoch(epoch)
        sampler.skip = (step - epoch * steps_per_epoch) * args.batch_size  # > 0 only when resuming mid-epoch
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=args.amp and device.type == "cuda"):
                loss = nn.functional.cross_entropy(ddp(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            prune.prune()  # same masks on every rank: same weights, deterministic selection
            step += 1
            if rank == 0 and step % args.log_every == 0:
                print(
                    f"step {step} loss {loss.item():.4f} sparsity {prune.sparsity()[1]:.4f} "
                    f"lr {scheduler.get_last_lr()[0]:.5f} {(time.perf_counter() - tic) / args.log_every:.3f} s/step",
                    flush=True,
                )
                tic = time.perf_counter()
            end_of_epoch = step % steps_per_epoch == 0
            if rank == 0 and (step % args.save_every == 0 or step == last_step or end_of_epoch):
                save_checkpoint(out, model, optimizer, scheduler, prune, step, args)
            if step == last_step:
                break

    top1 = evaluate(ddp, val_loader, device, world)
    total = prune.sparsity()[1]
    if rank == 0:
        print(
            f"done: step {step}, top-1 {top1:.4f}, sparsity {total:.4f}, banks balanced {prune.check()[1]}", flush=True
        )
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
