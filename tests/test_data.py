import pickle
import socket
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision import datasets

from cnnlab.data import sources
from cnnlab.data.loader import DeviceLoader, rotated, split_train_val
from cnnlab.errors import DataError
from tests.helpers import synthetic_digits, write_cifar10, write_idx, write_mnist


@pytest.mark.parametrize("gz", [True, False])
def test_idx_flat_folder(tmp_path, gz):
    write_mnist(tmp_path, n_train=30, n_test=10, gz=gz)
    data = sources.load("fashion_mnist", tmp_path)
    assert data.train_x.shape == (30, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert data.test_y.shape == (10,) and data.test_y.dtype == torch.int64
    assert np.array_equal(data.train_x[:, 0].numpy(), synthetic_digits(30, 0)[0])


def test_idx_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", n_train=20, n_test=5, gz=False)
    assert len(sources.load("mnist", tmp_path).train_y) == 20


def test_truncated_idx_is_a_clear_error(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=5, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        sources.load("mnist", tmp_path)


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=5, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not a gzip file at all")
    with pytest.raises(DataError, match="t10k-labels"):
        sources.load("mnist", tmp_path)


def test_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(DataError) as e:
        sources.load("mnist", tmp_path, download=False)
    message = str(e.value)
    assert "train-images-idx3-ubyte[.gz]" in message and "t10k-labels-idx1-ubyte[.gz]" in message
    assert str(tmp_path) in message and str(tmp_path / "MNIST" / "raw") in message
    assert "dataset." not in message and "\n" not in message  # the config boundary adds the override hint


def test_idx_labels_out_of_range_name_the_file(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=5, gz=True)
    labels = np.array([3, 200, 1, 0, 9], dtype=np.uint8)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz=True)
    with pytest.raises(DataError) as e:
        sources.load("fashion_mnist", tmp_path)
    message = str(e.value)
    assert str(tmp_path / "t10k-labels-idx1-ubyte.gz") in message and "label 200" in message
    assert "fashion_mnist has classes 0..9" in message and "\n" not in message


def test_cifar10_labels_out_of_range_name_the_batch(tmp_path):
    write_cifar10(tmp_path, per_batch=4, n_test=4)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch["labels"][2] = 12
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_3 holds label 12, but cifar10 has classes 0\.\.9"):
        sources.load("cifar10", tmp_path)


def _tree(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_failed_download_leaves_nothing_and_says_what_and_where(tmp_path, monkeypatch, name):
    def offline(url, download_root, *args, **kwargs):
        Path(download_root).mkdir(parents=True, exist_ok=True)  # as torchvision does before it connects
        raise URLError(OSError(101, "Network is unreachable\n" + "x" * 500))

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    (tmp_path / "kept").mkdir()  # folders that were there before must stay
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        sources.load(name, root, download=True)
    assert _tree(tmp_path) == [Path("kept")]
    message = str(e.value)
    assert "could not download" in message and "URLError" in message and "Network is unreachable" in message
    assert "dataset." not in message and "\n" not in message and len(message) < 600
    if name == "mnist":
        assert f"{root} or {root / 'MNIST' / 'raw'}" in message
        assert all(f"{stem}[.gz]" in message for stem in sources.IDX_FILES.values())
    else:
        assert str(root / "cifar-10-batches-py") in message
        assert "data_batch_1" in message and "test_batch" in message


def test_a_failed_download_keeps_what_was_there(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("mine")

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    with pytest.raises(DataError, match="could not download train-images-idx3-ubyte.gz") as e:
        sources.load("mnist", tmp_path, download=True)
    assert _tree(tmp_path) == [Path("MNIST"), Path("MNIST/raw"), Path("MNIST/raw/notes.txt")]
    assert str(raw) in str(e.value) and "(OSError: offline)" in str(e.value)


def test_a_stalled_download_fails_instead_of_hanging(tmp_path, monkeypatch):
    # A server that accepts connections (the kernel's backlog) and never answers: a network that drops packets.
    # Where no loopback is up it cannot listen; the download must then fail just as surely (the OS reason varies).
    with ExitStack() as stack:
        try:
            server = stack.enter_context(socket.socket())
            server.bind(("127.0.0.1", 0))
            server.listen(8)
            url = f"http://127.0.0.1:{server.getsockname()[1]}/"
        except OSError:
            url = "http://127.0.0.1:9/"
        monkeypatch.setattr(datasets.MNIST, "mirrors", [url])
        monkeypatch.setattr(sources, "DOWNLOAD_TIMEOUT_S", 0.5)
        start = time.monotonic()
        with pytest.raises(DataError, match="could not download train-images-idx3-ubyte.gz"):
            sources.load("mnist", tmp_path / "data", download=True)
    assert time.monotonic() - start < 30
    assert not (tmp_path / "data").exists()


def test_cifar10_batches(tmp_path):
    write_cifar10(tmp_path, per_batch=8, n_test=6)
    data = sources.load("cifar10", tmp_path)
    assert data.train_x.shape == (40, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    # the channel-major row layout of the real format: first 1024 bytes are the red plane
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"]
    assert np.array_equal(data.test_x[0, 0].numpy().ravel(), raw[0, :1024])


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    write_cifar10(tmp_path, per_batch=4, n_test=4)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": Payload(), "labels": []}, f)
    with pytest.raises(DataError, match="not a valid CIFAR-10 batch"):
        sources.load("cifar10", tmp_path)
    assert not marker.exists()


def test_mnist_sample_is_real_and_bundled():
    data = sources.load("mnist_sample")
    assert len(data.train_y) + len(data.test_y) >= 10_000
    assert set(data.test_y.tolist()) == set(range(10))
    assert data.train_x.shape[1:] == (1, 28, 28)


def test_split_is_seeded_and_disjoint():
    train, val = split_train_val(100, 20, seed=3)
    again, val_again = split_train_val(100, 20, seed=3)
    assert torch.equal(val, val_again) and len(val) == 20 and len(train) == 80
    assert not set(train.tolist()) & set(val.tolist())
    assert not torch.equal(val, split_train_val(100, 20, seed=4)[1])
    with pytest.raises(ValueError, match="val_size="):
        split_train_val(100, 100, seed=0)


def loader(n=50, **kw):
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 6, 6).contiguous()
    return DeviceLoader(x, torch.arange(n), batch_size=8, mean=[0.0], std=[1.0], **kw)


def test_every_sample_once_per_epoch():
    dl = loader(shuffle=True, seed=1)
    seen = torch.cat([y for _, y in dl.batches(epoch=0)])
    assert len(dl) == 7 and sorted(seen.tolist()) == list(range(50))
    assert seen.tolist() != list(range(50))


def test_same_seed_epoch_same_batches_and_resume_offset():
    a, b = loader(shuffle=True, pad=2, flip=True, seed=5), loader(shuffle=True, pad=2, flip=True, seed=5)
    first = [x for x, _ in a.batches(epoch=2)]
    assert all(torch.equal(p, q) for p, q in zip(first, (x for x, _ in b.batches(epoch=2)), strict=True))
    assert all(torch.equal(p, q) for p, q in zip(first[3:], (x for x, _ in b.batches(epoch=2, start=3)), strict=True))
    other = torch.cat([y for _, y in a.batches(epoch=3)])
    assert not torch.equal(other, torch.cat([y for _, y in a.batches(epoch=2)]))


def test_augmentation_shapes_and_values():
    x = torch.full((64, 3, 8, 8), 200, dtype=torch.uint8)
    x[:, :, :, :4] = 100  # left half darker: a flip moves it
    dl = DeviceLoader(x, torch.zeros(64, dtype=torch.long), 64, mean=[0.5] * 3, std=[0.25] * 3, pad=2, flip=True)
    ((xb, _),) = list(dl.batches())
    assert xb.shape == (64, 3, 8, 8) and xb.dtype == torch.float32
    values = set(torch.unique(xb).tolist())
    normalized = {round((v / 255 - 0.5) / 0.25, 4) for v in (0, 100, 200)}
    assert {round(v, 4) for v in values} <= normalized
    assert round((0 - 0.5) / 0.25, 4) in {round(v, 4) for v in values}  # zero padding shows up
    flipped = (xb[:, 0, 4, 3] > xb[:, 0, 4, 4]).sum()  # bright left of dark
    assert 0 < flipped < 64


def test_rotation_turns_about_the_centre():
    x = torch.zeros(2, 1, 9, 9)
    x[:, 0, 1, 4] = 1.0  # a dot above the centre
    turned = rotated(x, torch.tensor([90.0, 0.0]))
    assert torch.allclose(turned[0], torch.rot90(x[0], 1, (1, 2)), atol=1e-5)  # a quarter turn: exact
    assert torch.allclose(turned[1], x[1], atol=1e-6)  # 0 degrees: the image itself


def test_rotation_is_seeded_and_bounded():
    x = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 4:24, 13:15] = 255  # an upright bar: a turn spreads it sideways
    kw = dict(batch_size=64, mean=[0.0], std=[1 / 255], shuffle=True, seed=3)
    a, b = (
        DeviceLoader(x, torch.zeros(64, dtype=torch.long), rotate=10, **kw),
        DeviceLoader(x, torch.zeros(64, dtype=torch.long), rotate=10, **kw),
    )
    ((xa, _),), ((xb, _),) = list(a.batches(epoch=1)), list(b.batches(epoch=1))
    assert torch.equal(xa, xb)  # (seed, epoch) decide the angles: resume sees the same batches
    assert not torch.equal(xa, x.float())
    width = (xa[:, 0, 4] > 0).sum(1)  # the bar's top row widens with the angle, at most tan(10 deg) * 10 px a side
    assert width.max() > 2 and width.max() <= 2 + 2 * 2
    plain = DeviceLoader(x, torch.zeros(64, dtype=torch.long), **kw)
    same = DeviceLoader(x, torch.zeros(64, dtype=torch.long), rotate=0, **kw)
    assert torch.equal(next(iter(plain.batches(2)))[0], next(iter(same.batches(2)))[0])


def test_normalization_matches_torchvision():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]
    ((xb, _),) = list(DeviceLoader(x, torch.zeros(4, dtype=torch.long), 4, mean=mean, std=std).batches())
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(xb, ref, atol=1e-5)


def test_write_idx_roundtrip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    assert np.array_equal(sources.read_idx(write_idx(tmp_path / "a-idx3-ubyte", a, gz=True)), a)
