"""Random hostile files for the readers, run in a child process under a memory limit.

``python -m tests.fuzz_files KIND SEED CASES LIMIT_BYTES`` writes ``CASES`` files of ``KIND``
(``packed``: packed safetensors files whose metadata declares random sizes, stored tensors of random
sizes, checksums valid so only the content is hostile; ``state``: pruner state files, safetensors and
``torch.save``, with random entries and sizes), sets ``RLIMIT_AS`` to the address space in use plus
``LIMIT_BYTES``, runs every reader on each and prints one JSON line: how each case ended. A reader
may succeed or raise a library error (``ValueError``, ``OSError``, ``KeyError``, ``TypeError``);
anything else (``MemoryError``, a ``RuntimeError`` from an allocation) is a failure the test reports.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from pruning_tools import checkpoints, export, integrity
from pruning_tools.pytorch_pruning import Prune

LIBRARY_ERRORS = (ValueError, OSError, KeyError, TypeError)
SIZES = (0, 1, 2, 3, 7, 64, 100, 257, 4096, 32768, 1 << 20, 1 << 31, 1 << 40, -1)
BANKS = (2, 4, 16, 64, 256, 300, 1 << 15, 1 << 20, 0, -3)


def _size(rng: random.Random) -> int:
    return rng.choice(SIZES)


def _hostile_json(rng: random.Random):
    """Values a metadata entry should never hold."""
    return rng.choice(
        [
            "[" * 100_000 + "]" * 100_000,  # nested beyond the parser's recursion limit
            "9" * 5000,  # an integer of more digits than int() converts
            '{"a": NaN}',
            "null",
            '"text"',
            "{" * 10 + "}" * 10,
            "[1e999]",
        ]
    )


def packed_case(rng: random.Random, path: Path) -> None:
    """One packed file: declared shapes random (huge ones with nothing stored, most often), stored
    parts random or sized as the declared geometry would have them with k = 0."""
    tensors: dict[str, torch.Tensor] = {}
    table: dict[str, object] = {}
    for n in range(rng.choice((1, 1, 2, 3))):
        name = f"layer{n}.weight"
        shape = [_size(rng) for _ in range(rng.randint(1, 4))]
        bank = rng.choice(BANKS)
        k, tail_k = rng.choice((0, 0, 1, 4)), rng.choice((0, 0, 1))
        rows, banks, out_dim = rng.choice((1, 2, 16, 300)), rng.choice((0, 1, 2, 8)), rng.choice((0, 0, 1, 2))
        layout = rng.choice(("channels_last", "flat", "other"))
        if rng.random() < 0.6:  # what a file declaring a huge weight and storing nothing looks like
            shape = [rng.choice((3, 64, 4096, 32768, 1 << 20)) for _ in range(2)]
            bank, layout, k, tail_k = 64, "flat", 0, 0
            rows, banks, out_dim = shape[0], shape[1] // 64, 0
        values = torch.zeros(rows, banks, k, dtype=rng.choice((torch.float32, torch.float16, torch.float64)))
        tensors[f"{name}{export.SEP}values"] = values
        index_dtype = rng.choice((torch.uint8, torch.int16))
        tensors[f"{name}{export.SEP}indices"] = torch.zeros(rows, banks, k, dtype=index_dtype)
        tensors[f"{name}{export.SEP}tail_values"] = torch.zeros(rows, tail_k, dtype=values.dtype)
        tensors[f"{name}{export.SEP}tail_indices"] = torch.zeros(rows, tail_k, dtype=torch.uint8)
        table[name] = {"shape": shape, "dtype": str(values.dtype)[6:], "bank_size": bank,
                       "layout": layout, "out_dim": out_dim,
                       "k": k, "tail_k": tail_k}  # fmt: skip
        if rng.random() < 0.1:
            tensors[name] = torch.zeros(2)  # the same name stored dense too
    meta = json.dumps({"format": export.FORMAT, "packed": table})
    if rng.random() < 0.15:
        meta = _hostile_json(rng)
    integrity.save_file(tensors, path, metadata={export.METADATA_KEY: meta})


def _state_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))


def state_case(rng: random.Random, path: Path) -> Path:
    """One pruner state: a real one with random entries replaced, saved as safetensors or with
    ``torch.save`` (a zip whose record may be deflated far smaller than it unpacks)."""
    criterion = rng.choice(("magnitude", "movement"))
    prune = Prune(_state_model(), 0, 4, 2, {"*.weight": 0.75}, bank_size=16, criterion=criterion)
    state = prune.state_dict()
    name = rng.choice(list(state["masks"]))
    choice = rng.randrange(7)
    if choice == 0:
        state["masks"][name] = torch.zeros(_size(rng) % (1 << 22) if _size(rng) > 0 else 0, dtype=torch.uint8)
    elif choice == 1:
        state["step"] = rng.choice((-1, 1 << 70, 2.5, "1"))
    elif choice == 2:
        state["config"]["params"][name]["shape"] = [_size(rng), _size(rng)]
    elif choice == 3:
        state["mask_targets"][name] = rng.choice((float("nan"), 2.0, -0.1, 0.75))
    elif choice == 4:
        state["config"]["bank_size"] = rng.choice(BANKS + (1 << 63, 2**63 + 5))
    elif choice == 5 and "scores" in state:
        state["scores"][name] = torch.full((_size(rng) % 4096, 3), float("inf"))
    if rng.random() < 0.5:
        path = path.with_suffix(".safetensors")
        plain = {key: value for key, value in state.items() if key not in ("masks", "scores")}
        arrays = {
            f"{key}/{n}": np.ascontiguousarray(t.numpy())
            for key in ("masks", "scores")
            for n, t in state.get(key, {}).items()
        }
        text = json.dumps(plain) if rng.random() > 0.1 else _hostile_json(rng)
        integrity.save_file(arrays, path, metadata={"format": "pruning_tools.Prune/1", "state": text})
        return path
    path = path.with_suffix(".pt")
    torch.save(state, path)
    if rng.random() < 0.3:  # the same archive, one record replaced by 256 MiB of zeros, deflated to about 256 KiB
        _deflate_bomb(path)
    return path


def _deflate_bomb(path: Path) -> None:
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info, data in entries:
            if "/data/" in info.filename and "/.data/" not in info.filename:
                with out.open(info.filename, "w") as f:
                    block = bytes(1 << 20)
                    for _ in range(256):
                        f.write(block)
            else:
                out.writestr(info.filename, data)


def readers(kind: str, path: Path):
    """``(name, call)`` of every reader of a file of ``kind``."""
    if kind == "packed":
        return [
            ("read_packed", lambda: export.read_packed(path)),
            ("load_packed", lambda: export.load_packed(path)),
            ("inspect_file", lambda: checkpoints.inspect_file(path)),
        ]
    return [("Prune.load", lambda: Prune(_state_model(), 0, 4, 2, {"*.weight": 0.75}, bank_size=16).load(path))]


def main(kind: str, seed: int, cases: int, limit: int) -> None:
    torch.set_num_threads(1)
    rng = random.Random(seed)
    directory = Path(tempfile.mkdtemp())
    paths = []
    for case in range(cases):
        path = directory / f"case{case}.safetensors"
        paths.append(state_case(rng, path) if kind == "state" else (packed_case(rng, path) or path))
    in_use = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (in_use + limit, in_use + limit))
    outcomes: dict[str, int] = {}
    failures = []
    slowest = 0.0
    for path in paths:
        for name, call in readers(kind, path):
            start = time.perf_counter()
            try:
                call()
                outcome = "ok"
            except LIBRARY_ERRORS as error:
                outcome = type(error).__name__
            except BaseException as error:  # noqa: BLE001 - what the test is looking for
                outcome = f"FAIL {type(error).__name__}"
                failures.append(f"{name}({path.name}): {type(error).__name__}: {str(error)[:300]}")
            slowest = max(slowest, time.perf_counter() - start)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(json.dumps({"outcomes": outcomes, "failures": failures, "slowest_s": round(slowest, 3),
                      "files_bytes_max": max(p.stat().st_size for p in paths)}))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
