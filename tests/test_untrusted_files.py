"""Nothing a file declares makes a reader exhaust memory, and no path makes one wait forever.

- Every reader refuses a FIFO, a character device and a socket before opening it (one helper:
  ``integrity.regular_file``), and a directory.
- What a file may make us allocate is bounded by what it holds (``integrity.allocation_limit``),
  checked before the allocation; the limit can be raised for a trusted file.
- Random packed files and pruner states, read under an address-space limit in a child process: every
  reader succeeds or raises a library error, none runs out of memory (``tests/fuzz_files.py``).
- Metadata nested too deeply is a ``ValueError`` naming the file; a full disk while writing is an
  ``OSError`` naming the path; a packed file holding one name twice is refused.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from pruning_tools import checkpoints, export, integrity
from pruning_tools.demo import data as mnist_data
from pruning_tools.demo.lm import data as lm_data
from pruning_tools.inference import load_bank_sparse
from pruning_tools.pytorch_pruning import Prune
from pruning_tools.sensitivity import SensitivityTable

REPO = Path(__file__).resolve().parents[1]


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))


def make_prune(m=None) -> Prune:
    return Prune(m or small_model(), 0, 4, 2, {"*.weight": 0.75}, bank_size=16)


# ---------------------------------------------------------------- paths that are not regular files


def _fifo(directory: Path, name: str) -> Path:
    path = directory / name
    os.mkfifo(path)
    return path


def _socket(directory: Path, name: str) -> Path:
    path = directory / name
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))  # the node stays after the socket closes
    server.close()
    return path


def _char_device(directory: Path, name: str) -> Path:
    path = directory / name
    path.symlink_to("/dev/zero")  # endless: a reader that opened it would never finish
    return path


NODES = {"fifo": _fifo, "socket": _socket, "char_device": _char_device}

READERS = {
    "load_file": lambda p: integrity.load_file(p),
    "read_packed": lambda p: export.read_packed(p),
    "load_packed": lambda p: export.load_packed(p),
    "inspect_file": lambda p: checkpoints.inspect_file(p),
    "read_checkpoint_pt": lambda p: checkpoints.read_checkpoint(p),
    "Prune.load": lambda p: make_prune().load(p),
    "load_bank_sparse": lambda p: load_bank_sparse(small_model(), p),
    "SensitivityTable.load_json": lambda p: SensitivityTable.load_json(p),
}
SUFFIX = {"read_checkpoint_pt": ".pt", "SensitivityTable.load_json": ".json"}


def _call_with_deadline(call, path: Path, seconds: float = 20.0):
    """Run ``call`` in a thread; if it is still running after ``seconds`` it is blocked on ``path``:
    release it (open the FIFO for writing) and fail."""
    outcome: dict = {}

    def run():
        try:
            call()
            outcome["result"] = "returned"
        except BaseException as error:  # noqa: BLE001 - inspected below
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        pytest.fail(f"the reader was still waiting on {path} after {seconds} s")
    return outcome


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("reader", READERS)
def test_readers_refuse_what_is_not_a_regular_file_before_opening_it(tmp_path, reader, node):
    path = NODES[node](tmp_path, "input" + SUFFIX.get(reader, ".safetensors"))
    outcome = _call_with_deadline(lambda: READERS[reader](path), path)
    error = outcome.get("error")
    assert isinstance(error, integrity.NotRegularFileError), outcome
    assert str(path) in str(error) and "expected a regular file" in str(error)


@pytest.mark.parametrize("reader", ["load_packed", "inspect_file", "Prune.load"])
def test_a_directory_is_named_as_one(tmp_path, reader):
    path = tmp_path / "dir.safetensors"
    path.mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        READERS[reader](path)


def test_the_demo_datasets_refuse_a_fifo(tmp_path):
    for name in mnist_data.FILES.values():
        _fifo(tmp_path, name)
    outcome = _call_with_deadline(lambda: mnist_data.read_idx_dir(tmp_path), tmp_path / name)
    assert isinstance(outcome.get("error"), integrity.NotRegularFileError)
    corpus = tmp_path / "lm"
    corpus.mkdir()
    (corpus / lm_data.ARCHIVE).write_bytes(b"")
    (corpus / lm_data.SUMS).write_text(f"{'0' * 64}  listed\n")  # a file the sums list, a FIFO
    _fifo(corpus, "listed")
    outcome = _call_with_deadline(lambda: lm_data.load_corpus(corpus), corpus / "listed")
    assert isinstance(outcome.get("error"), integrity.NotRegularFileError)


# ---------------------------------------------------------------- what a file may make us allocate


def _empty_packed(path: Path, rows: int, cols: int) -> None:
    """A packed file declaring a ``[rows, cols]`` weight and storing no value (k = 0): what a weight
    pruned to nothing looks like, and the cheapest way to ask for a huge allocation."""
    banks = cols // 64
    u8 = torch.uint8
    p = export.PackedTensor(torch.zeros(rows, banks, 0), torch.zeros(rows, banks, 0, dtype=u8), torch.zeros(rows, 0),
                            torch.zeros(rows, 0, dtype=u8), (rows, cols), 64, "flat")  # fmt: skip
    export.check_packed(p)
    flat = {f"w{export.SEP}{part}": t for part, t in p.tensors().items()}
    meta = {"format": export.FORMAT, "packed": {"w": p.meta()}}
    integrity.save_file(flat, path, metadata={export.METADATA_KEY: json.dumps(meta)})


def test_a_small_file_declaring_a_huge_weight_is_refused_before_allocating(tmp_path, monkeypatch):
    monkeypatch.delenv(integrity.LIMIT_VARIABLE, raising=False)
    path = tmp_path / "huge.safetensors"
    _empty_packed(path, 32768, 32768)  # 4 GiB of float32 declared
    assert path.stat().st_size < 4096
    for read in (export.load_packed, export.read_packed, checkpoints.inspect_file):
        with pytest.raises(integrity.AllocationLimitError, match=integrity.LIMIT_VARIABLE) as caught:
            read(path)
        assert str(path) in str(caught.value) and "4294967296 bytes" in str(caught.value)
    with pytest.raises(integrity.AllocationLimitError):
        load_bank_sparse(small_model(), path)


def test_the_limit_can_be_raised_for_a_trusted_file(tmp_path, monkeypatch):
    monkeypatch.delenv(integrity.LIMIT_VARIABLE, raising=False)
    path = tmp_path / "zeros.safetensors"
    _empty_packed(path, 4096, 8192)  # 128 MiB declared: over the 64 MiB floor
    with pytest.raises(integrity.AllocationLimitError):
        export.load_packed(path)
    assert not export.load_packed(path, max_bytes=1 << 28)["w"].any()
    monkeypatch.setenv(integrity.LIMIT_VARIABLE, str(1 << 28))
    assert export.load_packed(path)["w"].shape == (4096, 8192)
    assert checkpoints.inspect_file(path)["tensors"][0]["nonzeros"] == 0
    monkeypatch.setenv(integrity.LIMIT_VARIABLE, "lots")
    with pytest.raises(ValueError, match=f"{integrity.LIMIT_VARIABLE}='lots' is not allowed"):
        export.load_packed(path)


def test_the_limit_rule():
    assert integrity.allocation_limit(0) == integrity.FLOOR == 64 << 20
    assert integrity.allocation_limit(1 << 30) == 256 << 30
    assert integrity.allocation_limit(10, max_bytes=5) == 5
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="max_bytes="):
            integrity.allocation_limit(10, max_bytes=bad)


def test_ordinary_packed_files_stay_well_inside_the_limit(tmp_path):
    """A real export at 1 of 64 kept (bank 64, the demo's tightest) unpacks to ~50 times its size."""
    torch.manual_seed(0)
    w = torch.randn(512, 1024)
    from pruning_tools.masks import bank_mask

    w *= bank_mask(w, None, 63 / 64, bank_size=64)
    report = export.save_packed({"w": w}, tmp_path / "p.safetensors", bank_size=64)
    assert w.numel() * 4 < integrity.EXPANSION * report.packed_bytes
    assert torch.equal(export.load_packed(tmp_path / "p.safetensors")["w"], w)


def test_a_compressed_torch_record_may_not_unpack_beyond_the_limit(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as source:
        entries = [(info.filename, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for name, content in entries:
            out.writestr(name, bytes(128 << 20) if name.endswith("/data/0") else content)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(integrity.AllocationLimitError, match="uncompressed"):
        checkpoints.read_checkpoint(path)
    with pytest.raises(integrity.AllocationLimitError, match="uncompressed"):
        make_prune().load(path)


def test_a_legacy_torch_file_may_not_declare_storages_beyond_the_limit(tmp_path):
    """The format before PyTorch 1.6 allocates each storage at its declared size before reading it."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(checkpoints.read_checkpoint(path)[0]["w"], torch.arange(4.0))
    data = path.read_bytes()  # the storage's numel (4) and the tensor's size (4), as pickle opcodes
    big = tmp_path / "big.pt"
    big.write_bytes(data.replace(b"cpuq\x06K\x04N", b"cpuq\x06J\x00\x00\x00\x40N", 1))  # 2**30 floats
    assert big.read_bytes() != data
    with pytest.raises(integrity.AllocationLimitError, match="its storages would take 4294967296 bytes"):
        checkpoints.read_checkpoint(big)
    with pytest.raises(integrity.AllocationLimitError):
        make_prune().load(big)


def test_a_gzip_bomb_in_the_demo_data_is_refused(tmp_path):
    for name in mnist_data.FILES.values():
        with gzip.open(tmp_path / name, "wb") as f:
            for _ in range(80):
                f.write(bytes(1 << 20))  # 80 MiB of zeros in about 80 KiB
    with pytest.raises(integrity.AllocationLimitError, match="decompressed"):
        mnist_data.read_idx_dir(tmp_path)


@pytest.mark.parametrize("kind,cases", [("packed", 120), ("state", 24)])
def test_fuzzed_files_never_exhaust_memory(kind, cases):
    """Random headers and sizes, read under ``RLIMIT_AS`` = in use + 512 MiB (``tests/fuzz_files.py``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop(integrity.LIMIT_VARIABLE, None)
    run = subprocess.run([sys.executable, "-m", "tests.fuzz_files", kind, "21", str(cases), str(512 << 20)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], report
    assert report["outcomes"].get("AllocationLimitError", 0) > 0, report  # the bound was reached, not only checks
    assert report["outcomes"].get("ok", 0) > 0, report  # and some files were read whole
    assert report["slowest_s"] < 30, report


# ---------------------------------------------------------------- what files say, and writing them


def _nested(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_metadata_is_a_value_error_naming_the_file(tmp_path):
    packed = tmp_path / "deep.safetensors"
    integrity.save_file({"b": torch.zeros(2)}, packed, metadata={export.METADATA_KEY: _nested()})
    with pytest.raises(ValueError, match=f"{packed}.*nested too deeply"):
        export.read_packed(packed)
    state = tmp_path / "state.safetensors"
    integrity.save_file({"masks/x": np.zeros(1, np.uint8)}, state, metadata={"format": "pruning_tools.Prune/1",
                                                                              "state": _nested()})  # fmt: skip
    with pytest.raises(ValueError, match=f"{state}.*nested too deeply"):
        make_prune().load(state)
    table = tmp_path / "table.json"
    table.write_text(_nested())
    with pytest.raises(ValueError, match=f"{table}.*nested too deeply"):
        SensitivityTable.load_json(table)


def test_a_name_stored_both_dense_and_packed_is_refused(tmp_path):
    path = tmp_path / "p.safetensors"
    _empty_packed(path, 4, 64)
    flat, raw = integrity.load_file(path)
    flat["w"] = torch.zeros(4, 64)
    integrity.save_file(flat, path, metadata={export.METADATA_KEY: raw[export.METADATA_KEY]})
    with pytest.raises(ValueError, match=r"\['w'\] are stored both dense and packed"):
        export.read_packed(path)


def test_a_packed_part_of_no_listed_tensor_is_refused(tmp_path):
    path = tmp_path / "p.safetensors"
    _empty_packed(path, 4, 64)
    flat, raw = integrity.load_file(path)
    flat[f"other{export.SEP}values"] = torch.zeros(1)
    integrity.save_file(flat, path, metadata={export.METADATA_KEY: raw[export.METADATA_KEY]})
    with pytest.raises(ValueError, match="part of no packed tensor"):
        export.read_packed(path)


@pytest.mark.parametrize("writer", ["save_packed", "Prune.save"])
def test_a_full_disk_is_an_os_error_naming_the_path(tmp_path, monkeypatch, writer):
    def full(*args, **kwargs):
        raise SafetensorError(f"Error while serializing: {os.strerror(errno.ENOSPC)}")

    import safetensors.numpy
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    path = tmp_path / "out.safetensors"
    with pytest.raises(OSError, match=f"cannot write {path}.*No space left"):
        if writer == "save_packed":
            export.save_packed({"b": torch.zeros(3)}, path)
        else:
            make_prune().save(path)
    assert not path.exists() and not list(tmp_path.iterdir())  # no temporary file left either
