"""Datasets: digits split/normalisation, CIFAR-10 reading, safe unpickling, download, sampling."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from gradleak.data import DATASETS, ImageDataset, load_dataset
from gradleak.data import cifar10 as cifar10_module
from gradleak.data.digits import DIGITS_MEAN, DIGITS_STD, digits_split_indices
from gradleak.data.safe_pickle import load_restricted_pickle
from gradleak.errors import ConfigError, DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path, monkeypatch):
    """No test may touch the user's cache or the network, nor read the folder $GRADLEAK_CIFAR10_DIR
    names (CI sets it for the tests that use the real subset through the ``cifar10_dir`` fixture)."""
    monkeypatch.setenv("GRADLEAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GRADLEAK_CIFAR10_DIR", raising=False)

    def no_network(url, dest):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(cifar10_module, "fetch_url", no_network)


# ---------------------------------------------------------------- synthetic CIFAR-10 folders


def pattern_rows(n: int, offset: int = 0) -> np.ndarray:
    """Rows whose value at (image r, channel c, y, x) is (r + 7c + 3y + x) mod 256, channel-major."""
    r, c, y, x = np.meshgrid(np.arange(n) + offset, np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((r + 7 * c + 3 * y + x) % 256).astype(np.uint8).reshape(n, 3072)


def py2_style_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2 cPickle wrote the official files (protocol 2, str opcodes,
    ``numpy.core.multiarray._reconstruct``), emitted opcode by opcode since Python 3 cannot."""

    def s(b: bytes) -> bytes:  # a Python 2 str
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    rows, cols = data.shape
    out = b"\x80\x02}("
    out += s(b"batch_label") + s(b"testing batch 1 of 1")
    out += s(b"labels") + b"](" + b"".join(i(v) for v in labels) + b"e"
    out += s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
    out += b"(" + i(1) + i(rows) + i(cols) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
    out += b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    out += b"\x89" + s(data.tobytes()) + b"tb"
    return out + b"u."


def dump(obj, protocol: int | str) -> bytes:
    if protocol == "py2":
        return py2_style_batch(obj[b"data"], obj[b"labels"])
    return pickle.dumps(obj, protocol=protocol)


def write_cifar_folder(
    folder: Path, batches: dict[str, tuple[np.ndarray, list[int]]], protocol: int | str = 2
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    for name, (data, labels) in batches.items():
        (folder / name).write_bytes(dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, protocol))
    return folder


def small_folder(root: Path, protocol: int | str = 2) -> Path:
    return write_cifar_folder(
        root / "cifar-10-batches-py",
        {
            "test_batch": (pattern_rows(4), [3, 1, 4, 1]),
            "data_batch_2": (pattern_rows(2, offset=100), [9, 9]),
            "data_batch_1": (pattern_rows(3, offset=50), [0, 5, 2]),
        },
        protocol,
    )


# ---------------------------------------------------------------- digits


def test_digits_shapes_range_and_labels():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1347, 450)
    for ds in (train, test):
        assert ds.input_shape == (1, 8, 8) and ds.images.dtype == torch.float32
        assert ds.images.min().item() == 0.0 and ds.images.max().item() == 1.0
        assert ds.labels.dtype == torch.int64
        assert sorted(ds.labels.unique().tolist()) == list(range(10))
        assert ds.class_names == [str(d) for d in range(10)] and ds.num_classes == 10


def test_digits_split_is_disjoint_and_matches_sklearn():
    from sklearn.datasets import load_digits

    raw = load_digits()
    test_idx, train_idx = digits_split_indices("test", 1797), digits_split_indices("train", 1797)
    assert set(test_idx).isdisjoint(train_idx) and len(test_idx) + len(train_idx) == 1797
    assert all(i % 4 == 0 for i in test_idx)
    test = load_dataset("digits", "test")
    np.testing.assert_array_equal(test.images[:, 0].numpy() * 16, raw.images[::4])
    np.testing.assert_array_equal(test.labels.numpy(), raw.target[::4])


def test_digits_mean_std_are_the_train_split_statistics():
    train = load_dataset("digits", "train")
    assert train.images.mean().item() == pytest.approx(DIGITS_MEAN[0], abs=1e-3)
    assert train.images.std(correction=0).item() == pytest.approx(DIGITS_STD[0], abs=1e-3)
    assert load_dataset("digits", "test").mean == DIGITS_MEAN  # fixed, not per split


# ---------------------------------------------------------------- real CIFAR-10 subset


def test_cifar10_real_subset(cifar10_dir):
    test = load_dataset("cifar10", "test", data_dir=cifar10_dir)
    train = load_dataset("cifar10", "train", data_dir=cifar10_dir.parent)  # parent folder works too
    assert (len(test), len(train)) == (846, 932)
    assert test.input_shape == (3, 32, 32) and test.class_names == CIFAR10_CLASSES
    assert test.images.dtype == torch.float32 and 0 <= test.images.min() and test.images.max() <= 1
    with open(cifar10_dir / "test_batch", "rb") as f:  # the shared file is trusted: plain pickle as oracle
        raw = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal((test.images[0] * 255).round().to(torch.uint8).flatten().numpy(), raw[b"data"][0])
    assert test.labels.tolist() == list(raw[b"labels"])
    assert test.mean == (0.4914, 0.4822, 0.4465) and test.std == (0.2470, 0.2435, 0.2616)


# ---------------------------------------------------------------- synthetic CIFAR-10 layouts


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_cifar10_reads_official_layout_channel_major(tmp_path, protocol):
    folder = small_folder(tmp_path, protocol)
    test = load_dataset("cifar10", "test", data_dir=folder)
    c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    expected_image1 = (1 + 7 * c + 3 * y + x) % 256
    np.testing.assert_array_equal((test.images[1] * 255).round().numpy(), expected_image1)
    assert test.labels.tolist() == [3, 1, 4, 1]
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert train.labels.tolist() == [0, 5, 2, 9, 9]  # data_batch_1 then data_batch_2
    np.testing.assert_array_equal((train.images[3] * 255).round().to(torch.uint8).flatten().numpy(),
                                  pattern_rows(1, offset=100)[0])


class SystemPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize(
    "payload, protocol, imported",
    [(SystemPayload, 2, r"(posix|os)\.system"), (EvalPayload, 2, r"__builtin__\.eval"), (EvalPayload, 4, r"builtins\.eval")],
)
def test_malicious_pickle_is_refused_before_it_runs(tmp_path, payload, protocol, imported):
    marker = tmp_path / "pwned"
    folder = small_folder(tmp_path)
    evil = pickle.dumps({b"data": pattern_rows(1), b"labels": [0], b"x": payload(marker)}, protocol=protocol)
    (folder / "test_batch").write_bytes(evil)
    with pytest.raises(DataError, match=f"refusing to unpickle .*test_batch: it imports {imported}, which a CIFAR-10"):
        load_dataset("cifar10", "test", data_dir=folder)
    assert not marker.exists()
    pickle.loads(evil)  # control: the payload is live, so the check above could have failed
    assert marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(np.array([1, "a"], dtype=object), protocol=2),  # object arrays hold arbitrary objects
        b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.",  # non-latin1 codec
        b"\x80\x02cnumpy\ndtype\nX\x01\x00\x00\x00O\x85R.",
    ],
    ids=["object-array", "codec", "object-dtype"],
)
def test_allowed_numpy_names_cannot_smuggle_objects(tmp_path, payload):
    path = tmp_path / "batch"
    path.write_bytes(payload)
    with pytest.raises(DataError, match="cannot unpickle .*batch.*refusing"):
        load_restricted_pickle(path)


# ---------------------------------------------------------------- bad folders and files


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing} does not exist"):
        load_dataset("cifar10", "test", data_dir=missing)
    with pytest.raises(DataError, match="no batches.meta"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


@pytest.mark.parametrize(
    "batch, problem",
    [
        ({b"data": pattern_rows(2)}, "no 'labels' entry"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "rows have 3000 values, expected 3072"),
        ({b"data": pattern_rows(3), b"labels": [0, 1]}, "3 images but 2 labels"),
        ({b"data": pattern_rows(2), b"labels": [0, 10]}, r"labels must lie in 0\.\.9"),
        ({b"data": pattern_rows(2).astype(np.float32), b"labels": [0, 1]}, "2-D uint8"),
        ([1, 2, 3], "holds a list, expected a dict"),
    ],
    ids=["no-labels", "row-length", "label-count", "label-range", "dtype", "not-dict"],
)
def test_malformed_batch_names_file_and_problem(tmp_path, batch, problem):
    folder = small_folder(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=f"test_batch.*{problem}"):
        load_dataset("cifar10", "test", data_dir=folder)


def test_truncated_batch_and_missing_train_batches(tmp_path):
    folder = small_folder(tmp_path)
    data = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot unpickle .*test_batch"):
        load_dataset("cifar10", "test", data_dir=folder)
    for p in folder.glob("data_batch_*"):
        p.unlink()
    with pytest.raises(DataError, match="no data_batch_\\* files"):
        load_dataset("cifar10", "train", data_dir=folder)


# ---------------------------------------------------------------- download (offline)


def tiny_archive(tmp_path: Path, extra: tarfile.TarInfo | None = None) -> Path:
    folder = small_folder(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)
    return archive


def serve(monkeypatch, archive: Path) -> list[str]:
    calls: list[str] = []

    def fake_fetch(url, dest):
        calls.append(url)
        shutil.copyfile(archive, dest)

    monkeypatch.setattr(cifar10_module, "fetch_url", fake_fetch)
    return calls


def test_download_verifies_md5_extracts_and_caches(tmp_path, monkeypatch):
    archive = tiny_archive(tmp_path)
    calls = serve(monkeypatch, archive)
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    ds = load_dataset("cifar10", "test")
    assert ds.labels.tolist() == [3, 1, 4, 1]
    assert calls == [cifar10_module.CIFAR10_URL]
    cached = tmp_path / "cache" / "cifar-10-batches-py"
    assert (cached / "test_batch").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["cifar-10-batches-py"]  # no leftovers
    load_dataset("cifar10", "train")
    assert len(calls) == 1  # second load reads the cache


def test_download_with_wrong_checksum_is_rejected(tmp_path, monkeypatch):
    serve(monkeypatch, tiny_archive(tmp_path))  # real md5 constant does not match the tiny archive
    with pytest.raises(DataError, match="md5 [0-9a-f]{32}, expected c58f3010.*pass --data-dir"):
        load_dataset("cifar10", "test")
    assert not (tmp_path / "cache" / "cifar-10-batches-py").exists()


def test_the_environment_names_the_cifar10_folder_when_no_data_dir_is_given(tmp_path, monkeypatch):
    folder = tmp_path / "env" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "batches.meta").write_bytes(b"")
    monkeypatch.setenv("GRADLEAK_CIFAR10_DIR", str(folder.parent))
    assert cifar10_module.resolve_cifar10_dir(None, download=False) == folder
    monkeypatch.setenv("GRADLEAK_CIFAR10_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="does not exist"):
        cifar10_module.resolve_cifar10_dir(None, download=False)


def test_offline_download_says_where_to_put_files(tmp_path, monkeypatch):
    def offline(url, dest):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(cifar10_module, "fetch_url", offline)
    cache = tmp_path / "cache" / "cifar-10-batches-py"
    with pytest.raises(DataError, match=f"could not download CIFAR-10 .*no route to host.*at {cache} or pass --data-dir"):
        load_dataset("cifar10", "test")
    with pytest.raises(DataError, match=f"not found: put .* at {cache}"):
        load_dataset("cifar10", "test", download=False)


@pytest.mark.parametrize("kind", ["escape", "symlink"])
def test_download_refuses_unsafe_archive_entries(tmp_path, monkeypatch, kind):
    info = tarfile.TarInfo("cifar-10-batches-py/../../evil" if kind == "escape" else "cifar-10-batches-py/link")
    if kind == "escape":
        info.size = 1
    else:
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = tiny_archive(tmp_path, extra=info)
    serve(monkeypatch, archive)
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(DataError, match="refusing to extract"):
        load_dataset("cifar10", "test")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "cifar-10-batches-py").exists()


# ---------------------------------------------------------------- sampling and registry


def test_sample_batch_is_seeded_distinct_and_consistent():
    ds = load_dataset("digits", "test")
    x1, y1, i1 = ds.sample_batch(16, torch.Generator().manual_seed(7))
    x2, y2, i2 = ds.sample_batch(16, torch.Generator().manual_seed(7))
    _, _, i3 = ds.sample_batch(16, torch.Generator().manual_seed(8))
    assert torch.equal(i1, i2) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(i1, i3)
    assert len(set(i1.tolist())) == 16 and 0 <= i1.min() and i1.max() < len(ds)
    assert torch.equal(x1, ds.images[i1]) and torch.equal(y1, ds.labels[i1])
    _, _, everything = ds.sample_batch(len(ds), torch.Generator().manual_seed(0))
    assert sorted(everything.tolist()) == list(range(len(ds)))


@pytest.mark.parametrize("size, message", [(451, "batch size 451 .* 450 images"), (0, "positive integer")])
def test_sample_batch_rejects_bad_sizes(size, message):
    with pytest.raises(ConfigError, match=message):
        load_dataset("digits", "test").sample_batch(size, torch.Generator().manual_seed(0))


def test_unknown_dataset_split_and_inconsistent_dataset():
    assert {"digits", "cifar10"} <= set(DATASETS)
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; choose one of: cifar10, digits"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        load_dataset("digits", "val")
    with pytest.raises(DataError, match="3 images but 2 labels"):
        ImageDataset("toy", "test", torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.int64), ["a"], (0.0,), (1.0,))
