"""Prune(structure="channel") under DistributedDataParallel: two processes (gloo, loopback) train on
different data, and their channel masks agree at every refresh; shrink works on the unwrapped model."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pruning_tools import Prune, shrink
from tests.structured.test_structured import ConvNet, inputs
from tests.test_distributed import free_port, spawn


def worker(rank: int, port: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = DDP(ConvNet())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prune = Prune(model, 0, 4, 1, {"*": 0.5}, structure="channel", example_inputs=inputs())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
        history = []
        for _ in range(6):
            x, y = torch.randn(4, 3, 4, 4, generator=data), torch.randint(0, 5, (4,), generator=data)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            prune.prune()
            history.append(prune.removed_units())
        masked = model(*inputs()).detach()
        state, twin = prune.state_dict(), copy.deepcopy(model.module)
        shrink(model.module, prune)
        shrink(twin, state)  # a state saved under DDP's "module." names shrinks the plain model too
        result = {"history": history, "masked": masked, "shrunk": model.module(*inputs()).detach()}
        result["from_state"] = twin(*inputs()).detach()
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_remove_the_same_channels(tmp_path) -> None:
    spawn(worker, (free_port(), str(tmp_path)))
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert a["history"] == b["history"] and a["history"][-1] != a["history"][0]
    assert torch.allclose(a["shrunk"], a["masked"], rtol=1e-4, atol=1e-6)
    assert torch.equal(a["shrunk"], b["shrunk"]) and torch.equal(a["shrunk"], a["from_state"])
