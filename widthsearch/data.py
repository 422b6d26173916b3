"""Datasets for training and evaluation: Fashion-MNIST, CIFAR-10/100 and ImageFolder.

Small datasets (28-32 px) fit in memory, so they stay there as uint8 tensors and are batched
by indexing, with augmentation done on the whole batch at once: an epoch is then not bound by
per-image Python in DataLoader workers, and it is exactly reproducible. Large ones
(ImageFolder, ImageNet-like) go through a DataLoader with workers. Both loaders are iterables
of ``(x, y)`` (x float NCHW normalized by the dataset mean/std, y int64) with
``state_dict()`` / ``load_state_dict()`` for resuming a run mid-epoch.

Splits: ``train`` (the training set minus val), ``val`` (carved from the training set with a
fixed seed; what training and search evaluate on) and ``test`` (the dataset's own test split,
for the final report only: DESIGN invariant 4).
"""

from __future__ import annotations

import abc
import gzip
import math
import os
import pickle
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from widthsearch.errors import DataError, UntrustedFileError, WidthSearchError

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

ENV_VAR = "WIDTHSEARCH_DATA"
DEBIAN_DATASETS = Path("/usr/share/datasets")  # dataset-fashion-mnist installs fashion-mnist/ here

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# name -> (train batch files, test batch files, label key) of the CIFAR "python version".
CIFAR_FILES = {
    "cifar10": (tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels"),
    "cifar100": (("train",), ("test",), b"fine_labels"),
}
# The only globals a CIFAR batch pickle needs (numpy arrays, under numpy 1 and 2 names).
SAFE_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

_GET_BY_PATH = "pass --data DIR or set WIDTHSEARCH_DATA=DIR"


@dataclass(frozen=True)
class DatasetSpec:
    """Constants of one dataset: where it lives, its statistics and how to get it."""

    title: str
    folder: str  # its subfolder under a data root (the root itself is tried too)
    default_root: Path | None
    num_classes: int | None  # None: read from the folder names
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int  # zero padding of the in-memory random crop
    how_to_get: str


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "Fashion-MNIST", "fashion-mnist", DEBIAN_DATASETS, 10, (0.2860,), (0.3530,), 2,
        "Install it with `apt-get install dataset-fashion-mnist` (it goes to "
        f"{DEBIAN_DATASETS / 'fashion-mnist'}), or {_GET_BY_PATH} where DIR holds the four "
        "*-ubyte.gz files or a fashion-mnist/ folder with them.",
    ),
    "cifar10": DatasetSpec(
        "CIFAR-10", "cifar-10-batches-py", None, 10,
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4,
        "Download the CIFAR-10 python version (cifar-10-python.tar.gz) from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and {_GET_BY_PATH} "
        "where DIR holds cifar-10-batches-py/.",
    ),
    "cifar100": DatasetSpec(
        "CIFAR-100", "cifar-100-python", None, 100,
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4,
        "Download the CIFAR-100 python version (cifar-100-python.tar.gz) from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and {_GET_BY_PATH} "
        "where DIR holds cifar-100-python/.",
    ),
    "imagefolder": DatasetSpec(
        "ImageFolder data", "imagenet", None, None,
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0,
        "Pass --data DIR or set WIDTHSEARCH_DATA=DIR where DIR (or DIR/imagenet) holds "
        "train/<class>/<image> and val/<class>/<image> (or test/).",
    ),
}


# ---------------------------------------------------------------------------------------------
# Locating and parsing files


def _locate(name: str, root: str | os.PathLike | None, found: Callable[[Path], bool],
            what: str) -> Path:
    """The folder holding a dataset: explicit root > $WIDTHSEARCH_DATA > the default location.

    Each base is tried as ``base/<dataset folder>`` and then ``base`` itself, so one
    WIDTHSEARCH_DATA can hold several datasets side by side.
    """
    spec = DATASETS[name]
    if root is not None:
        bases = [Path(root)]
    elif os.environ.get(ENV_VAR):
        bases = [Path(os.environ[ENV_VAR])]
    else:
        bases = [spec.default_root] if spec.default_root else []
    candidates = [p for base in bases for p in (base / spec.folder, base)]
    for folder in candidates:
        if found(folder):
            return folder
    where = ", ".join(map(str, candidates)) or f"no path given and ${ENV_VAR} is not set"
    raise DataError(f"{spec.title} not found (looked for {what} in: {where}). "
                           f"{spec.how_to_get}")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse a gzip IDX file (the MNIST family's format) of unsigned bytes.

    The header is validated so that a wrong or truncated file fails with a clear message
    rather than as a garbage reshape.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged deflate stream
        detail = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{path}: not a readable gzip IDX file ({detail})") from None
    header = 4 + 4 * ndim
    expected = 0x0800 + ndim  # 0x08: unsigned byte data; 2049 for labels, 2051 for images
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != expected or len(raw) < header:
        raise DataError(f"{path}: IDX magic number {magic} where {expected} was "
                               f"expected ({ndim}-d unsigned bytes); wrong or damaged file")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = math.prod(dims)
    if len(raw) - header != count:
        raise DataError(f"{path}: header says {dims} ({count} bytes) but the file holds "
                               f"{len(raw) - header} bytes of data; truncated or damaged file")
    return np.frombuffer(raw, np.uint8, count, header).reshape(dims).copy()


def load_fashion_mnist(root: str | os.PathLike | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fashion-MNIST as (train images, train labels, test images, test labels).

    Images are uint8 (N, 1, 28, 28), labels int64.
    """
    files = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    folder = _locate("fashion-mnist", root, lambda d: all((d / f).is_file() for f in files),
                     ", ".join(files))
    out: list[Tensor] = []
    for images_file, labels_file in FASHION_MNIST_FILES.values():
        images, labels = read_idx(folder / images_file, 3), read_idx(folder / labels_file, 1)
        if len(images) != len(labels):
            raise DataError(f"{folder}: {images_file} has {len(images)} images but "
                                   f"{labels_file} has {len(labels)} labels")
        out += [torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()]
    return out[0], out[1], out[2], out[3]


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that can build only what CIFAR batches hold: dicts, bytes, lists, ints
    and numpy arrays.

    A plain ``pickle.load`` calls whatever a crafted file names (``os.system``...), so a
    downloaded batch file must never reach it.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = SAFE_PICKLE_GLOBALS.get((module, name))
        if allowed is None:
            raise UntrustedFileError(f"refusing to unpickle {module}.{name} (code, never run): "
                                     "a CIFAR batch holds only numpy arrays, bytes, lists "
                                     "and ints")
        return allowed


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except WidthSearchError as e:
        raise type(e)(f"{path}: {e}") from None
    except Exception as e:  # a damaged pickle can raise nearly anything
        raise DataError(f"{path}: not a readable CIFAR batch ({e!r})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: a CIFAR batch is a dict, found {type(obj).__name__}")
    return obj


def _read_cifar_batches(paths: Sequence[Path], label_key: bytes) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        if b"data" not in batch or label_key not in batch:
            raise DataError(f"{path}: lacks b'data' or {label_key!r}")
        data = np.asarray(batch[b"data"])
        label = np.asarray(batch[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: b'data' should be uint8 (N, 3072), found "
                                   f"{data.dtype} {data.shape}")
        if label.shape != (len(data),):
            raise DataError(f"{path}: {len(data)} images but labels of shape {label.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar(name: str, root: str | os.PathLike | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CIFAR-10 ("cifar10") or CIFAR-100 ("cifar100", fine labels) from the python-version
    batch folder, as (train images, train labels, test images, test labels); images are uint8
    (N, 3, 32, 32), labels int64."""
    train_files, test_files, label_key = CIFAR_FILES[name]
    files = train_files + test_files
    folder = _locate(name, root, lambda d: all((d / f).is_file() for f in files),
                     ", ".join(files))
    train = _read_cifar_batches([folder / f for f in train_files], label_key)
    test = _read_cifar_batches([folder / f for f in test_files], label_key)
    return train[0], train[1], test[0], test[1]


def _check_labels(name: str, labels: Tensor) -> None:
    n = DATASETS[name].num_classes
    if n is not None and len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < n:
        raise DataError(f"{DATASETS[name].title}: labels span {int(labels.min())}.."
                               f"{int(labels.max())}, outside 0..{n - 1}")


# ---------------------------------------------------------------------------------------------
# Splits


def resolve_val_size(n: int, val_size: int | float | None) -> int:
    """How many of ``n`` training images to hold out for val.

    None: 5,000 (the usual hold-out of 50k-60k sets) or 10% of a smaller set; a float in
    (0, 1): that fraction; an int: that count.
    """
    if val_size is None:
        count = 5000 if n >= 50_000 else round(0.1 * n)
    elif isinstance(val_size, bool) or not isinstance(val_size, int | float):
        raise DataError(f"val_size must be an int or a float fraction, not {val_size!r}")
    elif isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise DataError(f"a fractional val_size must lie in (0, 1), not {val_size}")
        count = round(val_size * n)
    else:
        count = val_size
    if not 0 < count < n:
        raise DataError(f"val_size {val_size!r} holds out {count} of {n} training "
                               "images; train and val both need at least one")
    return count


def split_indices(n: int, val_size: int | float | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(train, val) indices into a training set of ``n`` images: disjoint, sorted, and
    depending only on ``n``, ``val_size`` and ``seed``, so every run and resume with the same
    seed holds out the same val images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    count = resolve_val_size(n, val_size)
    return perm[count:].sort().values, perm[:count].sort().values


def _first(indices: Tensor, limit: int | None, what: str) -> Tensor:
    if limit is None:
        return indices
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DataError(f"{what} must be a positive int or None, not {limit!r}")
    return indices[:limit]


# ---------------------------------------------------------------------------------------------
# Loaders


def random_crop_flip(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding by ``pad``, and random horizontal flip, of a whole NCHW
    batch at once (the standard small-image augmentation without per-image Python)."""
    n, _, h, w = x.shape
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        windows = F.pad(x, (pad, pad, pad, pad)).unfold(2, h, 1).unfold(3, w, 1)
        x = windows[torch.arange(n, device=x.device), :, dy, dx]  # (n, c, h, w)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    # drop_last never drops the only batch: a split smaller than batch_size still trains.
    return max(1, n // batch_size) if drop_last and n else math.ceil(n / batch_size)


class _EpochLoader(abc.ABC):
    """Epoch/batch bookkeeping shared by both loaders, so that resuming is exact.

    At the start of an epoch the generator draws the epoch's permutation (if shuffling) and
    one seed for the epoch's other randomness. The state is therefore the generator state at
    the epoch start plus the (epoch, batch) position. All ranks share the generator seed, so
    they draw the same permutation; rank r takes ``perm[r::world_size]`` cut to
    ``size // world_size`` so that every rank runs the same number of batches.

    Each ``iter()`` starts a new epoch (an epoch left mid-way counts as done), except the
    first one after ``load_state_dict()``, which continues the saved epoch.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool,
                 generator: torch.Generator | None, drop_last: bool,
                 device: str | torch.device, rank: int, world_size: int) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, not {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside 0..{world_size - 1}")
        if generator is not None and generator.device.type != "cpu":
            raise DataError("the loader's generator must be a CPU torch.Generator")
        self.size, self.batch_size, self.shuffle, self.drop_last = size, batch_size, shuffle, drop_last
        self.generator = generator
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self._epoch = 0
        self._batch = 0  # batches of the current epoch already yielded
        self._in_epoch = False
        self._resuming = False
        self._epoch_state: Tensor | None = None

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch (the same on every rank)."""
        return self.size // self.world_size

    @property
    def epoch(self) -> int:
        """Index of the epoch in progress, or of the next one."""
        return self._epoch

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return _num_batches(self.num_samples, self.batch_size, self.drop_last)

    @abc.abstractmethod
    def _load(self, batches: Sequence[Tensor], seed: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the (x, y) batches of ``batches[start:]``."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self._resuming:
            if self._in_epoch:
                self._epoch += 1
            self._batch = 0
            self._epoch_state = None if self.generator is None else self.generator.get_state()
        self._resuming, self._in_epoch = False, True
        if self.generator is not None:
            self.generator.set_state(self._epoch_state)
            order = torch.randperm(self.size, generator=self.generator) if self.shuffle else None
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        else:
            order, seed = None, 0
        order = torch.arange(self.size) if order is None else order
        batches = torch.split(order[self.rank::self.world_size][: self.num_samples],
                              self.batch_size)[: len(self)]
        for b, xy in enumerate(self._load(batches, seed, self._batch), start=self._batch):
            self._batch = b + 1
            if self._batch == len(batches):  # roll over now: a checkpoint taken after the
                self._end_epoch()           # last batch resumes at the next epoch
            yield xy
        if not batches:
            self._end_epoch()

    def _end_epoch(self) -> None:
        self._epoch, self._batch, self._in_epoch, self._epoch_state = self._epoch + 1, 0, False, None

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: the position and the generator state at the epoch start
        (plus sizes, checked on load). Safe for ``torch.load(weights_only=True)``."""
        if self._in_epoch:
            gen = self._epoch_state
        else:
            gen = None if self.generator is None else self.generator.get_state()
        return {"epoch": self._epoch, "batch": self._batch if self._in_epoch else 0,
                "generator": gen, "size": self.size, "batch_size": self.batch_size,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict()``: the next iteration yields exactly the batches an
        uninterrupted loader would have yielded next."""
        for key in ("size", "batch_size", "world_size"):
            if state[key] != getattr(self, key):
                raise DataError(f"loader state was saved with {key}={state[key]} but this "
                                       f"loader has {getattr(self, key)}: cannot resume exactly")
        if (state["generator"] is None) != (self.generator is None):
            raise DataError("loader state and loader disagree on having a generator")
        if not 0 <= state["batch"] < max(1, len(self)):
            raise DataError(f"loader state is at batch {state['batch']} of {len(self)}")
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])
        self._in_epoch = self._resuming = self._batch > 0
        self._epoch_state = state["generator"] if self._resuming else None


class TensorLoader(_EpochLoader):
    """Batches of an in-memory uint8 NCHW image tensor, augmented per batch on the device.

    Why not a DataLoader: for 28-32 px images, per-image transforms in worker processes
    dominate an epoch; indexing one tensor and augmenting the batch at once is much cheaper,
    and exactly reproducible from (generator state, epoch, batch). Batch b of rank r is
    augmented with a generator seeded from the epoch's seed, b and r.

    Yields ``(x, y)``: x float32 normalized by ``mean``/``std`` (default 0.5: [-1, 1]), y int64.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool = False,
                 augment: bool = False, generator: torch.Generator | None = None,
                 drop_last: bool = False, device: str | torch.device = "cpu", *,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 pad: int = 4, rank: int = 0, world_size: int = 1) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"images must be uint8 NCHW, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise DataError(f"{len(images)} images but labels of shape {tuple(labels.shape)}")
        if generator is None and (shuffle or augment):
            generator = torch.Generator().manual_seed(0)
        super().__init__(len(images), batch_size, shuffle, generator, drop_last, device, rank, world_size)
        channels = images.shape[1]
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.augment, self.pad = augment, pad
        self.mean = torch.tensor(mean or [0.5] * channels, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std or [0.5] * channels, device=self.device).view(1, -1, 1, 1)

    def _load(self, batches: Sequence[Tensor], seed: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        for b in range(start, len(batches)):
            index = batches[b].to(self.device)
            x = self.images.index_select(0, index)
            if self.augment:
                g = torch.Generator().manual_seed(seed + b * self.world_size + self.rank)
                x = random_crop_flip(x, self.pad, g)
            yield (x.float().div_(255).sub_(self.mean).div_(self.std),
                   self.labels.index_select(0, index))


class FolderLoader(_EpochLoader):
    """A DataLoader over a map-style dataset of (tensor, label), for data too big for memory:
    decoding and augmentation run in ``workers`` processes.

    Same interface as TensorLoader. On resume the batch order is exact; the random transforms
    of the resumed epoch are not (worker random streams restart with the epoch's seed).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False,
                 device: str | torch.device = "cpu", *, workers: int = 2, rank: int = 0,
                 world_size: int = 1) -> None:
        if generator is None and shuffle:
            generator = torch.Generator().manual_seed(0)
        super().__init__(len(dataset), batch_size, shuffle, generator, drop_last, device, rank, world_size)
        self.dataset, self.workers = dataset, workers

    def _load(self, batches: Sequence[Tensor], seed: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[b.tolist() for b in batches[start:]],
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed + self.rank))
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class _View(torch.utils.data.Dataset):
    """Some indices of a folder dataset with their own transform, so that train and val
    share one directory scan."""

    def __init__(self, base: Any, indices: Tensor, transform: Callable) -> None:
        self.base, self.indices, self.transform = base, indices.tolist(), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image, label = self.base[self.indices[i]]
        return self.transform(image), label


def folder_transform(image_size: tuple[int, int], augment: bool,
                     mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Train: RandomResizedCrop + flip. Eval: resize to size/0.875 then center crop (the
    usual 256 -> 224)."""
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if augment:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *tail])
    return T.Compose([T.Resize(round(max(image_size) / 0.875)), T.CenterCrop(image_size), *tail])


# ---------------------------------------------------------------------------------------------
# Entry point


Loader = TensorLoader | FolderLoader


@dataclass(frozen=True)
class DataBundle:
    """What a run needs from its data: three loaders and the shapes to build a model for.

    Sizes count images of the whole split (all ranks); only ``train`` is sharded by rank.
    """

    train: Loader
    val: Loader
    test: Loader
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    train_size: int
    val_size: int
    test_size: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    recal: Loader | None = None
    """Training images for BN recalibration: a fixed sample of the train split, unaugmented
    (eval transforms), in a fixed order, the same on every rank and every iteration."""


RECAL_SIZE = 10_000
"""Images in the recalibration loader (20 batches of 256 need 5,120)."""


def _recal_indices(train_idx: Tensor, seed: int, size: int) -> Tensor:
    """A fixed random sample of the train indices (its own stream: not the shuffle's)."""
    perm = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed + 2))
    return train_idx[perm[:size]]


def example_input(bundle: DataBundle) -> Tensor:
    """A (1, C, H, W) CPU tensor shaped like the bundle's images, for tracing a model."""
    return torch.zeros(1, bundle.in_channels, *bundle.image_size)


def _size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise DataError(f"image_size must be a positive int or (H, W), not {image_size!r}")
    return pair[0], pair[1]


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize uint8 images once at load (e.g. 28 -> 32 px to fit a CIFAR model)."""
    if tuple(images.shape[-2:]) == size:
        return images
    return torch.cat([F.interpolate(chunk.float(), size=size, mode="bilinear", antialias=True)
                      .round_().clamp_(0, 255).to(torch.uint8) for chunk in images.split(4096)])


def build_data(name: str, root: str | os.PathLike | None = None, *, batch_size: int,
               val_size: int | float | None = None, seed: int = 0, subset: int | None = None,
               val_subset: int | None = None, augment: bool = True,
               image_size: int | Sequence[int] | None = None, workers: int = 2, rank: int = 0,
               world_size: int = 1, device: str | torch.device = "cpu", drop_last: bool = True,
               pad: int | None = None) -> DataBundle:
    """Build the train/val/test loaders of a dataset.

    ``name``: "fashion-mnist", "cifar10", "cifar100" or "imagefolder". ``root``: a folder
    (default: $WIDTHSEARCH_DATA, then the dataset's default location). ``val_size``: images
    held out of train for val (int, or float fraction; default 5,000 or 10% below 50k),
    chosen by ``seed``, which also seeds the train loader's shuffling and augmentation
    (the same on every rank). ``subset`` / ``val_subset`` keep the first N images of those
    splits (quick runs, tests). ``image_size``: resize (in-memory sets) or crop size
    (imagefolder, default 224). ``pad``: random-crop padding of in-memory sets (default 4 for
    CIFAR, 2 for Fashion-MNIST). Val and test never shuffle or augment and are not sharded,
    so every rank computes exact metrics on them.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if name == "imagefolder":
        return _build_folder(root, batch_size=batch_size, val_size=val_size, seed=seed,
                             subset=subset, val_subset=val_subset, augment=augment,
                             image_size=image_size, workers=workers, rank=rank,
                             world_size=world_size, device=device, drop_last=drop_last)
    loaded = load_fashion_mnist(root) if name == "fashion-mnist" else load_cifar(name, root)
    train_x, train_y, test_x, test_y = loaded
    _check_labels(name, train_y)
    _check_labels(name, test_y)
    if image_size is not None:
        size = _size_pair(image_size)
        train_x, test_x = _resize(train_x, size), _resize(test_x, size)
    train_idx, val_idx = split_indices(len(train_y), val_size, seed)
    train_idx, val_idx = _first(train_idx, subset, "subset"), _first(val_idx, val_subset, "val_subset")
    if len(train_idx) < world_size:
        raise DataError(f"{len(train_idx)} train images cannot be shared by {world_size} ranks")
    stats = {"device": device, "mean": spec.mean, "std": spec.std}
    train = TensorLoader(train_x[train_idx], train_y[train_idx], batch_size, True, augment,
                         torch.Generator().manual_seed(seed + 1), drop_last, rank=rank,
                         world_size=world_size, pad=spec.pad if pad is None else pad, **stats)
    val = TensorLoader(train_x[val_idx], train_y[val_idx], batch_size, **stats)
    test = TensorLoader(test_x, test_y, batch_size, **stats)
    recal_idx = _recal_indices(train_idx, seed, RECAL_SIZE)
    recal = TensorLoader(train_x[recal_idx], train_y[recal_idx], batch_size, **stats)
    return DataBundle(train, val, test, spec.num_classes or 0, train_x.shape[1],
                      (train_x.shape[2], train_x.shape[3]), len(train_idx), len(val_idx),
                      len(test_y), name, spec.mean, spec.std, recal)


def _build_folder(root: str | os.PathLike | None, *, batch_size: int,
                  val_size: int | float | None, seed: int, subset: int | None,
                  val_subset: int | None, augment: bool, image_size: int | Sequence[int] | None,
                  workers: int, rank: int, world_size: int, device: str | torch.device,
                  drop_last: bool) -> DataBundle:
    """ImageFolder data: root/train/<class>/* (val carved from it) and root/val or root/test."""
    from torchvision.datasets import ImageFolder

    spec = DATASETS["imagefolder"]
    folder = _locate("imagefolder", root,
                     lambda d: (d / "train").is_dir() and any((d / s).is_dir() for s in ("val", "test")),
                     "train/ and val/ (or test/)")
    test_dir = folder / "val" if (folder / "val").is_dir() else folder / "test"
    try:
        base, test_base = ImageFolder(str(folder / "train")), ImageFolder(str(test_dir))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{folder}: not a usable image folder ({e})") from e
    if len(base.classes) < 2:
        raise DataError(f"{folder / 'train'} has {len(base.classes)} class folder(s) "
                        f"({', '.join(base.classes) or 'none'}); a classifier needs at least "
                        "two (train/<class>/<image>), or every accuracy would be 100%")
    if test_base.class_to_idx != base.class_to_idx:
        raise DataError(f"{test_dir} has classes {sorted(test_base.class_to_idx)} but "
                               f"{folder / 'train'} has {sorted(base.class_to_idx)}")
    size = _size_pair(224 if image_size is None else image_size)
    train_tf = folder_transform(size, augment, spec.mean, spec.std)
    eval_tf = folder_transform(size, False, spec.mean, spec.std)
    train_idx, val_idx = split_indices(len(base), val_size, seed)
    train_idx, val_idx = _first(train_idx, subset, "subset"), _first(val_idx, val_subset, "val_subset")
    if len(train_idx) < world_size:
        raise DataError(f"{len(train_idx)} train images cannot be shared by {world_size} ranks")
    test_set = _View(test_base, torch.arange(len(test_base)), eval_tf)
    common = {"device": device, "workers": workers}
    train = FolderLoader(_View(base, train_idx, train_tf), batch_size, True,
                         torch.Generator().manual_seed(seed + 1), drop_last, rank=rank,
                         world_size=world_size, **common)
    val = FolderLoader(_View(base, val_idx, eval_tf), batch_size, **common)
    test = FolderLoader(test_set, batch_size, **common)
    # Recalibration sees clean images (eval transforms): the statistics of randomly resized
    # crops are not those of the images a subnet is scored or deployed on.
    recal = FolderLoader(_View(base, _recal_indices(train_idx, seed, RECAL_SIZE), eval_tf),
                         batch_size, **common)
    return DataBundle(train, val, test, len(base.classes), 3, size, len(train_idx),
                      len(val_idx), len(test_set), "imagefolder", spec.mean, spec.std, recal)
