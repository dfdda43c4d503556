"""MNIST IDX reader: round trip, search order, checksum and error messages."""

import gzip
import hashlib

import numpy as np
import pytest

from pruning_tools.demo import data as mnist
from pruning_tools.demo.data import MnistData, load_mnist, parse_idx, read_idx_dir, write_idx_dir


def tiny(n_train=5, n_test=3, seed=0) -> MnistData:
    rng = np.random.default_rng(seed)
    return MnistData(
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )


def test_round_trip_through_gzip_idx(tmp_path):
    data = tiny()
    loaded = read_idx_dir(write_idx_dir(tmp_path, data))
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(data, field))
    assert loaded.train_images.dtype == np.uint8


def test_data_dir_comes_first(tmp_path):
    data = tiny(n_train=7)
    loaded = load_mnist(write_idx_dir(tmp_path, data))
    assert loaded.train_images.shape == (7, 28, 28)
    assert loaded.source == str(tmp_path)


def test_no_other_directory_is_tried_in_place_of_data_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty lacks train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path / "empty")


def test_reads_the_vendored_copy_of_real_mnist(mnist_dir):
    loaded = load_mnist(mnist_dir)
    assert loaded.train_images.shape == (60000, 28, 28) and loaded.test_images.shape == (10000, 28, 28)
    assert loaded.train_labels.shape == (60000,) and loaded.test_labels.shape == (10000,)
    assert np.bincount(loaded.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_clear_error_when_nothing_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_dir=.*not a directory.*train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path / "missing")


def test_damaged_file_is_caught_by_sha256sums(tmp_path):
    write_idx_dir(tmp_path, tiny())
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  train-labels-idx1-ubyte.gz\n")
    with pytest.raises(ValueError, match="SHA-256 does not match"):
        read_idx_dir(tmp_path)


def test_bad_magic_and_truncated_file():
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="header announces"):
        parse_idx(gzip.decompress(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")))


def test_head_trims_both_splits_and_rejects_bad_limit():
    data = tiny(n_train=5, n_test=3).head(2)
    assert len(data.train_images) == len(data.train_labels) == 2 and len(data.test_images) == 2
    with pytest.raises(ValueError, match=r"limit=0"):
        tiny().head(0)


def test_download_checks_md5_and_tries_the_next_mirror(tmp_path, monkeypatch):
    mirror = write_idx_dir(tmp_path / "mirror", tiny(n_train=9))
    sums = {name: hashlib.md5((mirror / name).read_bytes()).hexdigest() for name in mnist.FILES.values()}
    bad = tmp_path / "bad_mirror"
    write_idx_dir(bad, tiny(n_train=4, seed=1))  # other bytes: wrong MD5
    monkeypatch.setattr(mnist, "CANONICAL_MD5", sums)
    target = mnist.download(tmp_path / "cache", mirrors=(bad.as_uri() + "/", mirror.as_uri() + "/"))
    assert read_idx_dir(target).train_images.shape == (9, 28, 28)
    with pytest.raises(RuntimeError, match="MD5 mismatch"):
        mnist.download(tmp_path / "cache2", mirrors=(bad.as_uri() + "/",))


def test_load_mnist_downloads_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "download", lambda directory: write_idx_dir(directory, tiny(n_train=6)))
    with pytest.raises(FileNotFoundError, match="download_missing=True"):
        load_mnist(tmp_path / "c")
    assert load_mnist(tmp_path / "c", download_missing=True).train_images.shape == (6, 28, 28)
