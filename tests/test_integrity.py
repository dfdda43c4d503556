"""Item 6 of issue 15: a flipped byte or a torn write in a pruner state, a packed file or the demo's
weights is refused on load, naming the damaged tensor."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from pruning_tools import integrity
from pruning_tools.checkpoints import load_tensors
from pruning_tools.export import load_packed, save_packed
from pruning_tools.integrity import IntegrityError
from pruning_tools.pytorch_pruning import Prune


def header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def flip_tensor_byte(path, name, at=0):
    """Flip one bit of tensor ``name``'s data, ``at`` bytes into it."""
    n, head = header(path)
    start = 8 + n + head[name]["data_offsets"][0] + at
    raw = bytearray(path.read_bytes())
    raw[start] ^= 0x10
    path.write_bytes(bytes(raw))


def edit_header(path, old: bytes, new: bytes):
    """Replace bytes inside the JSON header, keeping its length (a flipped digit, a swapped shape)."""
    assert len(old) == len(new)
    n, _ = header(path)
    raw = path.read_bytes()
    head = raw[8 : 8 + n]
    assert head.count(old) >= 1, (old, head)
    path.write_bytes(raw[:8] + head.replace(old, new, 1) + raw[8 + n :])


def pruned():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    prune = Prune(model, 0, 0, 1, {"*.weight": 0.75}, bank_size=16)
    prune.prune()
    return model, prune


def test_pruner_state_with_a_flipped_mask_byte_names_the_tensor(tmp_path):
    model, prune = pruned()
    path = tmp_path / "pruner.safetensors"
    prune.save(path)
    flip_tensor_byte(path, "masks/2.weight", at=5)
    with pytest.raises(IntegrityError, match=r"tensor 'masks/2.weight' does not match its checksum"):
        prune.load(path)


def test_pruner_state_with_a_flipped_metadata_digit_is_refused(tmp_path):
    model, prune = pruned()
    path = tmp_path / "pruner.safetensors"
    prune.save(path)
    edit_header(path, b'\\"step\\": 1', b'\\"step\\": 7')  # the JSON state inside the metadata
    with pytest.raises(IntegrityError, match="metadata does not match its checksum"):
        prune.load(path)


def test_torn_writes_are_refused(tmp_path):
    model, prune = pruned()
    path = tmp_path / "pruner.safetensors"
    prune.save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 3])  # the last bytes never reached the disk
    with pytest.raises(IntegrityError, match="truncated or damaged"):
        prune.load(path)
    path.write_bytes(raw[:5])
    with pytest.raises(ValueError, match="not a pruner state file"):
        prune.load(path)


def test_packed_file_with_a_flipped_value_names_the_tensor(tmp_path):
    model, _ = pruned()
    path = tmp_path / "m.packed.safetensors"
    save_packed(model.state_dict(), path, bank_size=64)
    assert set(load_packed(path)) == set(model.state_dict())
    flip_tensor_byte(path, "0.weight::values", at=8)
    with pytest.raises(IntegrityError, match=r"tensor '0.weight::values' does not match its checksum"):
        load_packed(path)


def test_packed_file_with_a_swapped_shape_in_the_header_is_refused(tmp_path):
    model, _ = pruned()
    path = tmp_path / "m.packed.safetensors"
    save_packed({"w": torch.arange(1.0, 7.0).reshape(2, 3)}, path, bank_size=64)  # dense: stored as it is
    edit_header(path, b"[2,3]", b"[3,2]")  # same bytes, another shape: safetensors accepts it
    with pytest.raises(IntegrityError, match="tensor 'w' does not match its checksum"):
        load_packed(path)


def test_demo_weights_are_checksummed_and_verified_by_inspect(tmp_path):
    from pruning_tools.demo.outputs import write_outputs

    model, prune = pruned()
    result = {
        "weights": {k: v.detach().numpy() for k, v in model.state_dict().items()},
        "pruner_state": prune.state_dict(),
        "layer_sparsity": {"0.weight": 0.75, "2.weight": 0.75},
        "settings": {"bank_size": 16},
        "steps": [],
    }
    files, _ = write_outputs(result, tmp_path)
    assert set(load_tensors(files["weights"])) == set(model.state_dict())
    Prune(model, 0, 0, 1, {"*.weight": 0.75}, bank_size=16).load(files["pruner_state"])
    flip_tensor_byte(files["weights"], "2.bias")
    with pytest.raises(IntegrityError, match=r"weights.safetensors: tensor '2.bias' does not match its checksum"):
        load_tensors(files["weights"])


def test_files_without_checksums_still_load(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.ones((2, 2), np.float32)}, str(tmp_path / "plain.safetensors"))
    assert load_tensors(tmp_path / "plain.safetensors")["w"].shape == (2, 2)
    tensors, metadata = integrity.load_file(tmp_path / "plain.safetensors")
    assert integrity.verify(tmp_path / "plain.safetensors", tensors, metadata) is False


def test_a_damaged_checksum_entry_and_a_removed_tensor_are_refused(tmp_path):
    from safetensors.numpy import save_file

    tensors = {"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)}
    signed = integrity.signed_metadata(tensors)
    save_file({"a": tensors["a"]}, str(tmp_path / "x.safetensors"), metadata=signed)
    with pytest.raises(IntegrityError, match=r"missing: \['b'\]"):
        integrity.load_file(tmp_path / "x.safetensors")
    save_file(tensors, str(tmp_path / "y.safetensors"), metadata={integrity.CHECKSUM_KEY: "{not json"})
    with pytest.raises(IntegrityError, match="checksum entry"):
        integrity.load_file(tmp_path / "y.safetensors")


def test_digest_covers_dtype_shape_and_bytes():
    base = integrity.tensor_digest(torch.zeros(2, 3))
    assert base == integrity.tensor_digest(np.zeros((2, 3), np.float32))
    assert base != integrity.tensor_digest(torch.zeros(3, 2))
    assert base != integrity.tensor_digest(torch.zeros(2, 3, dtype=torch.int32))
    assert integrity.tensor_digest(torch.zeros(2, 3, dtype=torch.bfloat16)) != integrity.tensor_digest(
        torch.zeros(2, 3, dtype=torch.float16)
    )
