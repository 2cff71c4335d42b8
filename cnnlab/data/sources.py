"""Read the standard dataset formats into uint8 tensors (N, C, H, W) and int64 labels.

We read IDX (MNIST family) and CIFAR-10 pickle batches directly: a few lines each, and unlike torchvision's
dataset classes they accept any valid file (no MD5 pinning), so tests can write small files in the real
formats. Downloads use torchvision's own URLs and helpers.
"""

from __future__ import annotations

import gzip
import pickle
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import DataError

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
TORCHVISION_DIRS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
MNIST_SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "mnist_sample.npz"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
NUM_CLASSES = {"mnist_sample": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10}
DOWNLOAD_TIMEOUT_S = 20  # seconds without an answer before a download gives up


@dataclass
class Splits:
    """Training and test data as uint8 images (N, C, H, W) and int64 labels, on the CPU."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load(name: str, root: str | Path | None = None, download: bool = False) -> Splits:
    """Load a dataset by its config name: mnist_sample, mnist, fashion_mnist or cifar10."""
    if name not in NUM_CLASSES:
        raise DataError(f"unknown dataset {name!r}: allowed are {', '.join(NUM_CLASSES)}")
    if name == "mnist_sample":
        return load_mnist_sample()
    if root is None:
        raise DataError(f"{name} is read from files on disk, but no folder was given to look in")
    if name in TORCHVISION_DIRS:
        return load_idx_dataset(name, Path(root), download)
    return load_cifar10(Path(root), download)


def load_mnist_sample() -> Splits:
    with np.load(MNIST_SAMPLE) as arrays:
        splits = {k: arrays[k] for k in IDX_FILES}
    for key in ("train_y", "test_y"):
        check_labels(splits[key], "mnist_sample", f"{MNIST_SAMPLE} ({key})", "Reinstall cnnlab to restore it.")
    return _splits(splits)


def check_labels(
    labels: np.ndarray, name: str, path: Path | str, fix: str = "Delete it and download it again."
) -> None:
    """Reject labels outside 0..num_classes-1 as the file is read: later they only show up as an index error
    (or a CUDA device assert) deep inside the loss, with no hint of which file is wrong."""
    top = NUM_CLASSES[name] - 1
    if not np.issubdtype(labels.dtype, np.integer):
        bad = f"{labels.dtype} labels"
    else:
        low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
        if low >= 0 and high <= top:
            return
        bad = f"label {high if high > top else low}"
    raise DataError(
        f"{path} holds {bad}, but {name} has classes 0..{top}: the file is corrupt or from another dataset. {fix}"
    )


def _splits(arrays: dict[str, np.ndarray]) -> Splits:
    def images(a: np.ndarray) -> torch.Tensor:
        a = a[:, None] if a.ndim == 3 else a  # IDX images have no channel axis
        return torch.from_numpy(np.array(a, dtype=np.uint8))  # a writable copy

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    s = Splits(images(arrays["train_x"]), labels(arrays["train_y"]), images(arrays["test_x"]), labels(arrays["test_y"]))
    for split in ("train", "test"):
        x, y = getattr(s, f"{split}_x"), getattr(s, f"{split}_y")
        if len(x) != len(y):
            raise DataError(f"{split} split has {len(x)} images but {len(y)} labels")
    return s


@contextmanager
def network_timeout() -> Iterator[None]:
    """urllib waits forever on a network that drops packets: make a stalled download fail (and say so) instead."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _short(error: BaseException) -> str:
    """One line for a message: the exception's class and the start of its text (urllib's can be long)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:100]}{'...' if len(text) > 100 else ''}" if text else type(error).__name__


def _fetch(url: str, folder: Path, filename: str, md5: str) -> str | None:
    """Download `url` into folder/filename and unpack it there. On failure return a short reason and leave
    nothing new behind: no empty folders (they look like a dataset is there) and no partial archive."""
    from torchvision.datasets.utils import download_and_extract_archive

    new_dirs = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    archive = folder / filename
    had_archive = archive.exists()
    try:
        with network_timeout():
            download_and_extract_archive(url, folder, filename=filename, md5=md5)
        return None
    except Exception as e:  # network errors come in many types
        if not had_archive:
            archive.unlink(missing_ok=True)
        return _short(e)
    finally:
        for d in new_dirs:
            with suppress(OSError):  # rmdir removes only an empty folder: anything downloaded stays
                d.rmdir()


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped); a corrupt or truncated file raises DataError."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}. Delete it and download it again.") from e
    if len(data) < 4 or data[0] or data[1] or data[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number). Delete it and download it again.")
    ndim = data[3]
    dims = np.frombuffer(data, ">i4", count=ndim, offset=4) if len(data) >= 4 + 4 * ndim else None
    dtype = np.dtype(IDX_DTYPES[data[2]])
    if dims is None or len(data) != 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize:
        raise DataError(f"{path} is truncated or corrupt (size does not match its header). Download it again.")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(root: Path, name: str) -> dict[str, Path] | None:
    for folder in (root, root / TORCHVISION_DIRS[name] / "raw"):
        found = {}
        for key, stem in IDX_FILES.items():
            hits = [folder / f"{stem}{ext}" for ext in ("", ".gz") if (folder / f"{stem}{ext}").is_file()]
            if hits:
                found[key] = hits[0]
        if len(found) == len(IDX_FILES):
            return found
    return None


def training_images(name: str, root: str | Path | None, download: bool) -> int | None:
    """How many training images the dataset's files hold, from their headers (nothing else is read); None when
    they are missing and will be downloaded. Missing files without download: the DataError `load` would raise."""
    if name == "mnist_sample":
        with np.load(MNIST_SAMPLE) as arrays:
            return len(arrays["train_y"])
    if root is None:
        raise DataError(f"{name} is read from files on disk, but no folder was given to look in")
    if name == "cifar10":
        missing = [f for f in CIFAR_FILES if not (Path(root) / CIFAR_DIR / f).is_file()]
        if missing and not download:
            raise DataError(_cifar_missing(Path(root) / CIFAR_DIR, missing, None))
        return None if missing else 50_000
    files = _find_idx(Path(root), name)
    if files is None:
        if download:
            return None
        raise DataError(_idx_missing(name, Path(root), None))
    opener = gzip.open if files["train_y"].suffix == ".gz" else open
    with opener(files["train_y"], "rb") as f:
        header = f.read(8)
    if len(header) < 8:
        raise DataError(f"{files['train_y']} is truncated or corrupt (no IDX header). Download it again.")
    return int.from_bytes(header[4:8], "big")


def _idx_missing(name: str, root: Path, failure: str | None) -> str:
    raw = root / TORCHVISION_DIRS[name] / "raw"
    expected = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
    failed = f"; could not download {failure}" if failure else ""
    return f"no IDX files found in {root} or {raw}: {name} expects {expected} in one of these folders{failed}."


def _cifar_missing(folder: Path, missing: list[str], failure: str | None) -> str:
    return (
        f"missing {', '.join(missing)} in {folder}: cifar10 expects data_batch_1..5 and test_batch there "
        f"(unpacked from cifar-10-python.tar.gz){f'; could not download {failure}' if failure else ''}."
    )


def load_idx_dataset(name: str, root: Path, download: bool) -> Splits:
    files = _find_idx(root, name)
    failure = None
    if files is None and download:
        failure = _download_idx(name, root)
        files = _find_idx(root, name)
    if files is None:
        raise DataError(_idx_missing(name, root, failure))
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        if arrays[f"{split}_x"].ndim != 3 or arrays[f"{split}_y"].ndim != 1:
            raise DataError(f"{files[split + '_x']} does not hold images (N, H, W) with labels (N,)")
        check_labels(arrays[f"{split}_y"], name, files[f"{split}_y"])
    return _splits(arrays)


def _download_idx(name: str, root: Path) -> str | None:
    """Fetch the four archives into torchvision's layout; None when done, else what failed and why."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    raw = root / TORCHVISION_DIRS[name] / "raw"
    for filename, md5 in cls.resources:
        reasons = []
        for mirror in cls.mirrors:
            reason = _fetch(f"{mirror}{filename}", raw, filename, md5)
            if reason is None:
                break
            reasons.append(reason)
        else:  # every mirror failed; the first one's reason is enough (offline, the others repeat it)
            return f"{filename} ({reasons[0] if reasons else 'no mirrors'})"
    return None


# ---------------------------------------------------------------- CIFAR-10 (python pickle batches)


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles of numpy arrays; allow exactly that and never run other code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles store bytes
    }

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not a valid CIFAR-10 batch ({e}). Delete it and download it again.") from e
    if len(data) != len(labels):
        raise DataError(f"{path} has {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar10(root: Path, download: bool) -> Splits:
    folder = root / CIFAR_DIR
    missing = [f for f in CIFAR_FILES if not (folder / f).is_file()]
    failure = None
    if missing and download:
        from torchvision.datasets import CIFAR10

        reason = _fetch(CIFAR10.url, root, CIFAR10.filename, CIFAR10.tgz_md5)
        failure = f"{CIFAR10.filename} ({reason})" if reason else None
        missing = [f for f in CIFAR_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(_cifar_missing(folder, missing, failure))
    batches = {}
    for f in CIFAR_FILES:
        batches[f] = read_cifar_batch(folder / f)
        check_labels(batches[f][1], "cifar10", folder / f)
    train = [batches[f] for f in CIFAR_FILES[:-1]]
    test_x, test_y = batches[CIFAR_FILES[-1]]
    return _splits(
        {
            "train_x": np.concatenate([x for x, _ in train]),
            "train_y": np.concatenate([y for _, y in train]),
            "test_x": test_x,
            "test_y": test_y,
        }
    )
