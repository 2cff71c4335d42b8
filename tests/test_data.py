import pickle

import numpy as np
import pytest
import torch

from cnnlab.data import sources
from cnnlab.data.loader import DeviceLoader, split_train_val
from cnnlab.errors import ConfigError, DataError
from tests.conftest import synthetic_digits, write_cifar10, write_idx, write_mnist


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
    assert "train-images-idx3-ubyte" in str(e.value) and "dataset.root" in str(e.value)


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
    with pytest.raises(ConfigError, match="dataset.val_size"):
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


def test_normalization_matches_torchvision():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]
    ((xb, _),) = list(DeviceLoader(x, torch.zeros(4, dtype=torch.long), 4, mean=mean, std=std).batches())
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(xb, ref, atol=1e-5)


def test_write_idx_roundtrip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    assert np.array_equal(sources.read_idx(write_idx(tmp_path / "a-idx3-ubyte", a, gz=True)), a)
