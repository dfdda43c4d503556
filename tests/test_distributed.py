"""Masks across processes.

- The sharded k-th selection against ``masks.py`` on the whole tensor, with ranks simulated by
  threads (exact, ties included, fast).
- Two real processes (gloo, CPU) started once per module: DDP training (masks and weights equal on
  both ranks and equal to a single-process run), FSDP2 ``fully_shard`` training (masks equal a
  single-process run), DTensor masks of fixed tensors (exact), ``Prune.broadcast_masks``, sharding refused
  at construction.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pruning_tools import distributed as D
from pruning_tools import geometry as G
from pruning_tools import masks as M
from pruning_tools.pytorch_pruning import Prune

WORLD = 2
JOIN_TIMEOUT_S = 120


# ---------------------------------------------------------------- ranks as threads


class ThreadWorld:
    """``world`` threads that sum tensors like an all-reduce."""

    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=30)
        self.slots = [None] * world

    def reduce_sum(self, rank: int, x: torch.Tensor) -> torch.Tensor:
        self.slots[rank] = x.clone()
        self.barrier.wait()
        total = sum(self.slots)
        self.barrier.wait()
        return total

    def run(self, fn):
        """``fn(rank, reduce_sum)`` on every rank; the results in rank order."""
        results, errors = [None] * self.world, []

        def target(rank):
            try:
                results[rank] = fn(rank, lambda x: self.reduce_sum(rank, x))
            except BaseException as e:  # noqa: BLE001 - surfaced below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        if errors:
            raise errors[0]
        return results


def sharded_global(weights, masks, sparsity, world, split):
    """Global masks computed by ``world`` simulated ranks, shards of dim 0 in rank order
    (``torch.chunk``, as FSDP2), reassembled into whole tensors."""
    shards = [list(w.chunk(world)) if s else [w] * world for w, s in zip(weights, split)]
    mshards = [
        (list(m.chunk(world)) if s else [m] * world) if m is not None else [None] * world for m, s in zip(masks, split)
    ]
    for i, w in enumerate(weights):  # chunk gives fewer pieces than world for short dim 0
        while len(shards[i]) < world:
            shards[i].append(w[:0])
            mshards[i].append(None if masks[i] is None else masks[i][:0])
    total = sum(w.numel() for w in weights)
    k = G.keep_count(total, sparsity)

    def rank_fn(rank, reduce_sum):
        scores = [M.magnitude_scores(shards[i][rank], mshards[i][rank]).float() for i in range(len(weights))]
        return D.keep_largest_sharded(scores, k, split, rank, world, reduce_sum)

    per_rank = ThreadWorld(world).run(rank_fn)
    return [torch.cat([per_rank[r][i] for r in range(world)]) if s else per_rank[0][i] for i, s in enumerate(split)]


@st.composite
def pools(draw):
    n = draw(st.integers(1, 3))
    weights, masks, split = [], [], []
    for _ in range(n):
        rows, cols = draw(st.integers(1, 7)), draw(st.integers(1, 9))
        values = draw(st.lists(st.integers(-4, 4), min_size=rows * cols, max_size=rows * cols))
        w = torch.tensor(values, dtype=torch.float32).reshape(rows, cols) / 4  # many ties
        weights.append(w)
        masks.append(
            (torch.rand(rows, cols, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) > 0.3)
            if draw(st.booleans())
            else None
        )
        split.append(draw(st.booleans()))
    total = sum(w.numel() for w in weights)
    keep = draw(st.integers(1, max(1, total - 1)))
    return weights, masks, split, 1 - keep / total


@settings(max_examples=30, deadline=None)
@given(pools(), st.integers(1, 4))
def test_sharded_selection_equals_single_process(pool, world):
    weights, masks, split, sparsity = pool
    if G.keep_count(sum(w.numel() for w in weights), sparsity) in (0, sum(w.numel() for w in weights)):
        return
    expected = M.global_masks(weights, masks, sparsity)
    got = sharded_global(weights, masks, sparsity, world, split)
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_sortable_keys_keep_the_order(dtype):
    x = torch.tensor([-3.0, -1.0, -0.25, 0.0, 1e-3, 0.5, 1.0, 2.0, 1e4], dtype=dtype)
    keys, bits = D.sortable_keys(x)
    assert bits == (64 if dtype == torch.float64 else 32)
    assert bool((keys.diff() > 0).all())


def test_kth_largest_key_single_rank():
    x = torch.tensor([0.5, -1.0, 2.0, 0.5, 0.25, 7.0])
    keys, bits = D.sortable_keys(x)
    for k in range(1, x.numel() + 1):
        key = D.kth_largest_key([keys], k, bits, lambda t: t, torch.device("cpu"))
        assert x[keys == key][0] == x.sort(descending=True).values[k - 1]


def test_plain_tensors_go_through_masks_unchanged():
    w = torch.randn(6, 16)
    assert torch.equal(D.compute_mask(w, None, 0.5, "fix", 4), M.bank_mask(w, None, 0.5, 4))
    assert torch.equal(D.compute_mask(w, None, 0.5, "none"), M.unstructured_mask(w, None, 0.5))
    assert D.count_nonzero(w * (w > 0)) == int((w > 0).sum())


# ---------------------------------------------------------------- two processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, args, world: int = WORLD, timeout: float = JOIN_TIMEOUT_S) -> None:
    """Run ``fn(rank, *args)`` in ``world`` fresh processes; kill them all if one fails or time runs out."""
    ctx = mp.start_processes(fn, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} processes did not finish within {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)


class Net(nn.Module):
    """A conv (tail banks), two linears (one with an uneven dim 0: 9 rows over 2 ranks)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.fc1 = nn.Linear(12 * 16, 48)
        self.fc2 = nn.Linear(48, 9)

    def forward(self, x):  # x: [batch, 3, 4, 4]
        x = torch.relu(self.conv(x)).flatten(1)  # [batch, 12 * 16]
        return self.fc2(torch.relu(self.fc1(x)))


PRUNE_DICT = {
    "*conv.weight": {"sparsity": 0.5, "bank_size": 4},  # bank-balanced, row length 3: tail banks only
    "*fc1.weight": {"sparsity": 0.75, "bank_size": 16},  # bank-balanced
    "*fc2.weight": {"sparsity": 0.6, "balance": "none"},  # unstructured, exact k-th over shards
    "*bias": {"sparsity": 0.3, "balance": "global"},  # one threshold over all biases
}
PRUNE_DICT_NAMES = ["conv.weight", "fc1.weight", "fc2.weight"]
STEPS, BATCH = 8, 8
SCHEDULE = dict(pretrain_step=2, sparse_step=4, frequency=2)


def make_net() -> Net:
    """In float64: DDP's averaged half-batch gradients and one process's whole-batch ones differ by
    rounding (~1e-16 here, ~1e-7 in float32), which could flip a near-tie in a mask on some CPU; masks
    are compared exactly, so the weights they come from must agree far below any gap between them."""
    torch.manual_seed(0)
    return Net().double()


def batches():
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(BATCH, 3, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 9, (BATCH,), generator=g))
        for _ in range(STEPS)
    ]


def train(model, prune, rank: int = 0, world: int = 1):
    """SGD with momentum; each rank takes its contiguous slice of every batch (mean loss, so the
    averaged gradients equal the whole batch's)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    per = BATCH // world
    for x, y in batches():
        x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        prune.prune()


def plain_name(name: str) -> str:
    return name.removeprefix("module.")


def worker(rank: int, port: int, out: str) -> None:
    if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback: the test needs no network
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {
            "ddp": ddp_case(rank),
            "fsdp": fsdp_case(rank),
            "dtensor": dtensor_case(rank),
            "construction": construction_case(rank),
        }
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def ddp_case(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_net())
    prune = Prune(model, prune_dict=PRUNE_DICT, **SCHEDULE)
    train(model, prune, rank, WORLD)
    out = {
        "masks": {plain_name(n): m.clone() for n, m in prune.masks().items()},
        "weights": {plain_name(n): p.detach().clone() for n, p in model.named_parameters()},
        "sparsity": prune.sparsity()[1],
        "check": prune.check()[1],
    }
    # broadcast_masks: a rank that disagrees is overwritten by rank 0's masks and weights
    name = "module.fc1.weight"
    if rank == 1:
        prune.masks()[name][0, :] = True
    prune.broadcast_masks()
    out["after_broadcast"] = prune.masks()[name].clone()
    return out


def fsdp_case(rank: int) -> dict:
    from torch.distributed.fsdp import fully_shard

    model = make_net()
    for layer in (model.conv, model.fc1, model.fc2):
        fully_shard(layer)
    fully_shard(model)
    prune = Prune(model, prune_dict=PRUNE_DICT, **SCHEDULE)
    train(model, prune, rank, WORLD)
    params = dict(model.named_parameters())
    out = {
        "masks": {n: m.clone() for n, m in prune.masks().items()},
        "weights": {n: D.local(p).detach().clone() for n, p in params.items()},
        "sharded": {n: D.is_sharded(p) for n, p in params.items()},
        "sparsity": prune.sparsity(),
        "check": prune.check()[1],
    }
    # each rank saves and reloads the state of its own shards
    again = Prune(model, prune_dict=PRUNE_DICT, **SCHEDULE)
    again.load_state_dict(prune.state_dict())
    out["reloaded_equal"] = all(torch.equal(again.masks()[n], m) for n, m in prune.masks().items())
    # restore_sparsity measures the zeros over all shards
    restored = Prune(model, prune_dict=PRUNE_DICT, restore_sparsity=True, **SCHEDULE)
    out["restored_initial"] = {n: restored.target(n, 0) for n in PRUNE_DICT_NAMES}
    # one bank over budget on rank 1 only: check() fails on every rank
    with torch.no_grad():
        if rank == 1:
            D.local(params["fc1.weight"])[0, :16] = 1.0
    out["check_after_damage"] = prune.check()
    return out


DTENSOR_SHAPES = {"conv": (5, 6, 3, 3), "rows": (7, 40), "short": (1, 8), "vector": (9,)}


def dtensor_weights():
    g = torch.Generator().manual_seed(3)
    return {n: (torch.randint(-6, 7, s, generator=g) / 6.0) for n, s in DTENSOR_SHAPES.items()}  # ties


def dtensor_case(rank: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    full = dtensor_weights()
    sharded = {n: distribute_tensor(w, mesh, [Shard(0)]) for n, w in full.items()}
    out = {}
    for name, w in sharded.items():
        for layout in ("channels_last", "flat"):
            out[(name, "fix", layout)] = D.compute_mask(w, None, 0.5, "fix", 4, layout, name=name)
        out[(name, "none")] = D.compute_mask(w, None, 0.7, "none", name=name)
    out["global"] = D.global_masks(list(sharded.values()), [None] * len(sharded), 0.8, list(sharded))
    out["nonzeros"] = {n: D.count_nonzero(w) for n, w in sharded.items()}
    try:
        D.compute_mask(distribute_tensor(full["rows"], mesh, [Shard(1)]), None, 0.5, "fix", 4, name="cols")
    except ValueError as e:
        out["shard1_error"] = str(e)
    return out


def construction_case(rank: int) -> dict:
    """Sharding the pruner cannot serve is refused when ``Prune(...)`` is built, not at a refresh."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    out = {}
    mesh = init_device_mesh("cpu", (WORLD,))
    cols = nn.Linear(40, 8, bias=False)
    cols.weight = nn.Parameter(distribute_tensor(cols.weight.detach(), mesh, [Shard(1)]))
    transposed = nn.Sequential(nn.ConvTranspose2d(16, 8, 3))
    fully_shard(transposed)
    for key, model, prune_dict in (
        ("shard1", cols, {"weight": 0.5}),
        ("transposed", transposed, {"0.weight": 0.5}),
    ):
        try:
            Prune(model, 0, 10, 1, prune_dict, bank_size=4)
        except ValueError as e:
            out[key] = str(e)
    out["transposed_unstructured_ok"] = Prune(transposed, 0, 10, 1, {"0.weight": 0.5}, balance="none").step == 0
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two processes saved, in rank order."""
    out = tmp_path_factory.mktemp("dist")
    spawn(worker, (free_port(), str(out)))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def reference():
    """The same training in one process, whole batches."""
    model = make_net()
    prune = Prune(model, prune_dict=PRUNE_DICT, **SCHEDULE)
    train(model, prune)
    return {"masks": prune.masks(), "weights": dict(model.named_parameters()), "sparsity": prune.sparsity()}


def test_ddp_masks_and_weights_identical_across_ranks(ranks):
    a, b = ranks[0]["ddp"], ranks[1]["ddp"]
    assert set(a["masks"]) == {"conv.weight", "fc1.weight", "fc2.weight", "conv.bias", "fc1.bias", "fc2.bias"}
    for name in a["masks"]:
        assert torch.equal(a["masks"][name], b["masks"][name]), name
    for name in a["weights"]:
        assert torch.equal(a["weights"][name], b["weights"][name]), name
    assert a["check"] and b["check"]


def test_ddp_equals_single_process(ranks, reference):
    got = ranks[0]["ddp"]
    for name, mask in reference["masks"].items():
        assert torch.equal(got["masks"][name], mask), name
        assert torch.allclose(got["weights"][name], reference["weights"][name], atol=1e-5), name
    assert got["sparsity"] == pytest.approx(reference["sparsity"][1], abs=1e-12)


def test_broadcast_masks_overwrites_other_ranks(ranks):
    assert torch.equal(ranks[0]["ddp"]["after_broadcast"], ranks[1]["ddp"]["after_broadcast"])
    assert torch.equal(ranks[1]["ddp"]["after_broadcast"], ranks[0]["ddp"]["masks"]["fc1.weight"])


def test_fsdp2_masks_equal_single_process(ranks, reference):
    assert all(ranks[0]["fsdp"]["sharded"].values()), "fully_shard should turn every parameter into a DTensor"
    for name, mask in reference["masks"].items():
        got = torch.cat([ranks[r]["fsdp"]["masks"][name] for r in range(WORLD)])  # shards of dim 0, in rank order
        assert torch.equal(got, mask), name
        weights = torch.cat([ranks[r]["fsdp"]["weights"][name] for r in range(WORLD)])  # the module's live shards
        assert torch.equal(weights != 0, (reference["weights"][name] != 0)), name
        assert torch.allclose(weights, reference["weights"][name], atol=1e-5), name


def test_fsdp2_sparsity_and_check_count_globally(ranks, reference):
    layers, total = reference["sparsity"]
    for r in range(WORLD):
        got_layers, got_total = ranks[r]["fsdp"]["sparsity"]
        assert got_total == pytest.approx(total, abs=1e-12)
        assert got_layers == pytest.approx(layers, abs=1e-12)
        assert ranks[r]["fsdp"]["check"]


def test_fsdp2_state_reload_restore_and_failed_check(ranks, reference):
    layers = reference["sparsity"][0]
    for r in range(WORLD):
        got = ranks[r]["fsdp"]
        assert got["reloaded_equal"]
        assert got["restored_initial"] == pytest.approx({n: layers[n] for n in PRUNE_DICT_NAMES}, abs=1e-12)
        per_param, all_ok = got["check_after_damage"]
        assert not all_ok and not per_param["fc1.weight"] and per_param["fc2.weight"]


def test_dtensor_masks_equal_whole_tensor_masks(ranks):
    full = dtensor_weights()
    for name, w in full.items():
        got = {
            key: torch.cat([ranks[r]["dtensor"][key] for r in range(WORLD)])
            for key in ranks[0]["dtensor"]
            if isinstance(key, tuple) and key[0] == name
        }
        for layout in ("channels_last", "flat"):
            assert torch.equal(got[(name, "fix", layout)], M.compute_mask(w, None, 0.5, "fix", 4, layout)), (
                name,
                layout,
            )
        assert torch.equal(got[(name, "none")], M.unstructured_mask(w, None, 0.7)), name
        assert ranks[0]["dtensor"]["nonzeros"][name] == int((w != 0).sum())
    expected = M.global_masks(list(full.values()), [None] * len(full), 0.8)
    for i, e in enumerate(expected):
        assert torch.equal(torch.cat([ranks[r]["dtensor"]["global"][i] for r in range(WORLD)]), e)


def test_sharding_off_dim_0_is_refused_for_banks(ranks):
    assert "placements=(Shard(dim=1),)" in ranks[0]["dtensor"]["shard1_error"]


def test_unsupported_sharding_is_refused_at_construction(ranks):
    for r in range(WORLD):
        got = ranks[r]["construction"]
        assert "weight has placements=(Shard(dim=1),)" in got["shard1"]
        assert "0.weight is sharded on dim 0 but its output channels are on dim 1" in got["transposed"]
        assert got["transposed_unstructured_ok"]
