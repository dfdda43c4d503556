"""The library's CUDA paths: skipped without a GPU, run wherever ``scripts/gpu_check.py`` runs.

- masks computed on CUDA tensors equal the CPU engine's, bit for bit (``pruning_tools.benchmarks.gpu`` cases);
- ``Prune`` on CUDA parameters, ``prune_device="default"`` and ``"cpu"``: masks where they belong
  (host masks pinned), the same run as on the CPU, and no host synchronisation in ``prune()`` on a step
  without refresh (``torch.cuda.set_sync_debug_mode("error")`` raises on one);
- a model moved to the GPU after ``Prune(...)``, state loaded onto the GPU, ``apply_mask_`` of a host mask;
- 2:4 weights through ``torch.sparse.to_sparse_semi_structured`` where the GPU supports them;
- with two GPUs: DDP and FSDP2 over NCCL (two processes).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pruning_tools import distributed as D
from pruning_tools import masks as M
from pruning_tools.benchmarks.gpu import cases as C
from pruning_tools.benchmarks.gpu import correctness as K
from pruning_tools.benchmarks.gpu import sparse as S
from pruning_tools.pytorch_pruning import Prune

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")

GPU = torch.device("cuda")


@contextlib.contextmanager
def no_host_sync():
    """Any synchronising CUDA call inside the block raises."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("dtype", C.DTYPES)
def test_masks_on_cuda_equal_the_cpu_engine(dtype):
    geometries = [*C.EDGE, *C.model_geometries("BERT-base"), *C.model_geometries("ResNet-50")[:4]]
    comparisons = K.compare_mask_cases(C.mask_cases(geometries, dtypes=(dtype,)), GPU)
    assert all(c.device.startswith("cuda") for c in comparisons)
    assert all(c.equal for c in comparisons), [f"{c.label}: {c.mismatches}" for c in comparisons if not c.equal][:10]


def test_global_masks_on_cuda_equal_the_cpu_engine():
    comparisons = K.compare_global_cases(C.default_global_cases(quick=True), GPU)
    assert all(c.equal for c in comparisons), [c.label for c in comparisons if not c.equal]


# ---------------------------------------------------------------- Prune on CUDA parameters


@pytest.mark.parametrize("prune_device", ["default", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prune_on_cuda_follows_the_cpu_run(prune_device, dtype):
    run = K.follow_training(GPU, dtype, prune_device, profile=False)
    assert not run.mask_mismatch_steps and not run.weight_mismatch_steps, run
    assert not run.wrong_device and not run.not_pinned, run
    assert run.syncs_plain and all(n == 0 for n in run.syncs_plain), run.syncs_plain
    assert not [n for n in run.notes if "differs" in n], run.notes


@pytest.mark.parametrize("prune_device", ["default", "cpu"])
def test_no_host_sync_in_prune_without_refresh(prune_device):
    model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(200, 10)).cuda()
    prune = Prune(model, 0, 4, 2, {"0.weight": 0.5, "2.weight": {"sparsity": 0.9, "balance": "none"}},
                  prune_device=prune_device, bank_size=4)  # fmt: skip
    prune.prune()  # step 1: no refresh, nothing to apply yet
    prune.prune()  # step 2: refresh
    with no_host_sync():
        prune.prune()  # step 3: re-apply only
    for mask in prune.masks().values():
        if prune_device == "cpu":
            assert mask.device.type == "cpu" and mask.is_pinned()
        else:
            assert mask.device.type == "cuda"
    weights = dict(model.named_parameters())
    assert torch.equal(weights["0.weight"] != 0, prune.masks()["0.weight"].cuda())


@pytest.mark.parametrize("prune_device", ["default", "cpu"])
@pytest.mark.parametrize("fix", [False, True])
def test_model_moved_to_cuda_after_prune(prune_device, fix):
    model = nn.Linear(128, 32)
    with torch.no_grad():
        model.weight[:, ::2] = 0  # zeros to restore
    prune = Prune(model, 0, 4, 2, {"weight": 0.75}, restore_sparsity=True, fix_sparsity=fix,
                  prune_device=prune_device, bank_size=16)  # fmt: skip
    model.cuda()
    for _ in range(5):
        with torch.no_grad():
            model.weight.add_(0.01)  # revives every pruned weight
        prune.prune()
        assert torch.equal(model.weight != 0, prune.masks()["weight"].cuda())
    mask = prune.masks()["weight"]
    assert mask.device.type == ("cpu" if prune_device == "cpu" else "cuda")
    assert prune_device != "cpu" or mask.is_pinned()
    with no_host_sync():
        prune.prune()
    assert prune.check()[1]


def test_apply_mask_from_a_pinned_host_mask_writes_plus_zero():
    w = torch.tensor([-1.0, float("nan"), 2.0, -3.0], device=GPU)
    keep = torch.tensor([False, False, True, True]).pin_memory()
    with no_host_sync():
        M.apply_mask_(w, keep)
    assert w.cpu().view(torch.int32).tolist()[:2] == [0, 0]  # +0.0, the NaN cleared too
    assert w.cpu().tolist()[2:] == [2.0, -3.0]


@pytest.mark.parametrize("prune_device", ["default", "cpu"])
def test_state_dict_loads_onto_cuda(prune_device):
    ok, detail = K.state_round_trip(GPU, prune_device)
    assert ok, detail


# ---------------------------------------------------------------- 2:4 semi-structured


def test_semi_structured_2_4_equals_masked_dense():
    backends, refused = S.semi_structured_backends(GPU)
    if not backends:
        pytest.skip(f"no semi-structured backend on this GPU: {refused}")
    rows = S.semi_rows(GPU, S.BERT_SHAPES, backends, batches=(1, 16), rounds=1, repeat=1)
    checks = [r for r in rows if r.ok is not None]
    assert checks and all(r.ok for r in checks), [(r.name, r.value, r.data) for r in checks if not r.ok]


# ---------------------------------------------------------------- two GPUs: NCCL


def train_on(model, prune, device, rank: int = 0, world: int = 1) -> None:
    from tests.test_distributed import BATCH, batches

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    per = BATCH // world
    for x, y in batches():
        x, y = x[rank * per : (rank + 1) * per].to(device), y[rank * per : (rank + 1) * per].to(device)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        prune.prune()


def nccl_worker(rank: int, port: int, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.nn.parallel import DistributedDataParallel as DDP

    from tests.test_distributed import PRUNE_DICT, SCHEDULE, WORLD, dtensor_weights, make_net, plain_name

    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results: dict = {}
        for prune_device in ("default", "cpu"):
            model = DDP(make_net().to(device), device_ids=[rank])
            prune = Prune(model, prune_dict=PRUNE_DICT, prune_device=prune_device, **SCHEDULE)
            train_on(model, prune, device, rank, WORLD)
            masks = prune.masks()
            case = {
                "masks": {plain_name(n): m.cpu().clone() for n, m in masks.items()},
                "devices": {plain_name(n): m.device.type for n, m in masks.items()},
                "check": prune.check()[1],
            }
            name = "module.fc1.weight"
            if rank == 1:
                masks[name][0, :] = True
            prune.broadcast_masks()
            case["after_broadcast"] = prune.masks()[name].cpu().clone()
            results[f"ddp {prune_device}"] = case
        mesh = init_device_mesh("cuda", (WORLD,))
        model = make_net().to(device)
        for layer in (model.conv, model.fc1, model.fc2):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        prune = Prune(model, prune_dict=PRUNE_DICT, **SCHEDULE)
        train_on(model, prune, device, rank, WORLD)
        results["fsdp"] = {"check": prune.check()[1], "sparsity": prune.sparsity()[1]}
        full = dtensor_weights()
        sharded = {n: distribute_tensor(w.to(device), mesh, [Shard(0)]) for n, w in full.items()}
        results["dtensor"] = {
            **{(n, "fix"): D.compute_mask(w, None, 0.5, "fix", 4, name=n).cpu() for n, w in sharded.items()},
            **{(n, "none"): D.compute_mask(w, None, 0.7, "none", name=n).cpu() for n, w in sharded.items()},
            "global": [m.cpu() for m in D.global_masks(list(sharded.values()), [None] * len(sharded), 0.8)],
        }
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def nccl_ranks(tmp_path_factory):
    from tests.test_distributed import WORLD, free_port, spawn

    out = tmp_path_factory.mktemp("nccl")
    spawn(nccl_worker, (free_port(), str(out)))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@two_gpus
@pytest.mark.parametrize("prune_device", ["default", "cpu"])
def test_ddp_over_nccl(nccl_ranks, prune_device):
    a, b = (r[f"ddp {prune_device}"] for r in nccl_ranks)
    for name in a["masks"]:
        assert torch.equal(a["masks"][name], b["masks"][name]), name
    assert a["check"] and b["check"]
    assert set(a["devices"].values()) == {"cpu" if prune_device == "cpu" else "cuda"}
    assert torch.equal(a["after_broadcast"], b["after_broadcast"])
    assert torch.equal(b["after_broadcast"], a["masks"]["fc1.weight"])


@two_gpus
def test_fsdp2_over_nccl(nccl_ranks):
    assert all(r["fsdp"]["check"] for r in nccl_ranks)
    assert nccl_ranks[0]["fsdp"]["sparsity"] == nccl_ranks[1]["fsdp"]["sparsity"]


@two_gpus
def test_dtensor_masks_over_nccl_equal_whole_tensor_masks(nccl_ranks):
    from tests.test_distributed import dtensor_weights

    full = dtensor_weights()
    for name, w in full.items():
        for balance, sparsity, bank in (("fix", 0.5, 4), ("none", 0.7, 64)):
            got = torch.cat([r["dtensor"][(name, balance)] for r in nccl_ranks])
            assert torch.equal(got, M.compute_mask(w, None, sparsity, balance, bank)), (name, balance)
    expected = M.global_masks(list(full.values()), [None] * len(full), 0.8)
    for i, e in enumerate(expected):
        assert torch.equal(torch.cat([r["dtensor"]["global"][i] for r in nccl_ranks]), e)
