"""Tests of widthsearch.data on tiny files written here (and the real Fashion-MNIST if installed)."""

from __future__ import annotations

import gzip
import io
import itertools
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from widthsearch.data import (
    DATASETS,
    DEBIAN_DATASETS,
    FolderLoader,
    TensorLoader,
    _EpochLoader,
    build_data,
    example_input,
    load_cifar,
    load_fashion_mnist,
    random_crop_flip,
    read_idx,
    resolve_val_size,
    split_indices,
)
from widthsearch.errors import WidthSearchError

FASHION_FILES = {
    "train-images-idx3-ubyte.gz": 2051,
    "train-labels-idx1-ubyte.gz": 2049,
    "t10k-images-idx3-ubyte.gz": 2051,
    "t10k-labels-idx1-ubyte.gz": 2049,
}


# --- helpers that write tiny datasets ----------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    magic = 0x0800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion(folder: Path, n_train: int = 40, n_test: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return arrays


def cifar_batch(n: int, label_key: bytes, classes: int, rng: np.random.Generator) -> dict:
    return {
        b"batch_label": b"tiny batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def write_cifar10(folder: Path, per_batch: int = 4, n_test: int = 5) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": cifar_batch(per_batch, b"labels", 10, rng) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n_test, b"labels", 10, rng)
    for name, batch in batches.items():
        write_pickle(folder / name, batch)
    return batches


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return (x * std + mean).mul(255).round().to(torch.uint8)


def tiny_loader(n: int = 50, batch_size: int = 8, seed: int = 3, **kwargs) -> TensorLoader:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 6, 6).contiguous()
    labels = torch.arange(n)
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("augment", True)
    return TensorLoader(images, labels, batch_size, generator=torch.Generator().manual_seed(seed),
                        pad=2, **kwargs)


def run(loader, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The next `batches` batches, crossing epochs like a training loop does."""
    out: list = []
    while len(out) < batches:
        for xy in loader:
            out.append(xy)
            if len(out) == batches:
                break
    return out


# --- Fashion-MNIST (IDX) -----------------------------------------------------------------------


def test_fashion_mnist_from_root_argument(tmp_path):
    arrays = write_fashion(tmp_path / "fashion-mnist")
    train_x, train_y, test_x, test_y = load_fashion_mnist(tmp_path)
    assert train_x.shape == (40, 1, 28, 28) and train_x.dtype == torch.uint8
    assert torch.equal(train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte.gz"]).byte())
    assert torch.equal(test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte.gz"]))
    assert test_x.shape == (10, 1, 28, 28) and test_y.dtype == torch.int64

    bundle = build_data("fashion-mnist", tmp_path, batch_size=8, val_size=10, augment=False)
    assert (bundle.train_size, bundle.val_size, bundle.test_size) == (30, 10, 10)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, (28, 28))
    _, val_idx = split_indices(40, 10, seed=0)
    val_x = torch.cat([x for x, _ in bundle.val])
    val_y = torch.cat([y for _, y in bundle.val])
    assert torch.equal(denormalize(val_x, bundle.mean, bundle.std), train_x[val_idx])
    assert torch.equal(val_y, train_y[val_idx])
    assert example_input(bundle).shape == (1, 1, 28, 28)


def test_fashion_mnist_files_directly_in_env_folder(tmp_path, monkeypatch):
    write_fashion(tmp_path, n_train=20, n_test=4)
    monkeypatch.setenv("WIDTHSEARCH_DATA", str(tmp_path))
    bundle = build_data("fashion-mnist", batch_size=4, val_size=0.25)
    assert (bundle.train_size, bundle.val_size, bundle.test_size) == (15, 5, 4)
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_explicit_root_wins_over_env(tmp_path, monkeypatch):
    write_fashion(tmp_path / "a", n_train=20)
    write_fashion(tmp_path / "b", n_train=30)
    monkeypatch.setenv("WIDTHSEARCH_DATA", str(tmp_path / "a"))
    assert len(load_fashion_mnist(tmp_path / "b")[1]) == 30
    assert len(load_fashion_mnist()[1]) == 20


def test_idx_bad_magic_and_truncation(tmp_path):
    write_idx(tmp_path / "labels.gz", np.zeros(5), magic=2051)
    with pytest.raises(WidthSearchError, match="magic"):
        read_idx(tmp_path / "labels.gz", 1)
    images = tmp_path / "images.gz"
    write_idx(images, np.zeros((3, 4, 4)))
    with gzip.open(images, "rb") as f:
        raw = f.read()
    with gzip.open(images, "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(WidthSearchError, match="truncated"):
        read_idx(images, 3)
    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    with pytest.raises(WidthSearchError, match="gzip"):
        read_idx(tmp_path / "plain.gz", 1)


def test_fashion_mnist_resized_on_load(tmp_path):
    write_fashion(tmp_path, n_train=20, n_test=4)
    bundle = build_data("fashion-mnist", tmp_path, batch_size=4, image_size=32)
    assert bundle.image_size == (32, 32)
    assert next(iter(bundle.train))[0].shape == (4, 1, 32, 32)
    assert next(iter(bundle.test))[0].shape == (4, 1, 32, 32)


@pytest.mark.skipif(not (DEBIAN_DATASETS / "fashion-mnist").is_dir(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("WIDTHSEARCH_DATA", raising=False)
    bundle = build_data("fashion-mnist", batch_size=500, subset=1000)
    assert (bundle.train_size, bundle.val_size, bundle.test_size) == (1000, 5000, 10000)
    full_train = split_indices(60000)[0]
    assert len(full_train) == 55000
    assert len(bundle.train) == 2 and len(bundle.val) == 10 and len(bundle.test) == 20
    assert bundle.test.images.shape == (10000, 1, 28, 28)
    x = torch.cat([x for x, _ in itertools.islice(bundle.test, 4)])
    assert x.shape == (2000, 1, 28, 28)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05  # mean/std table
    labels = torch.cat([y for _, y in bundle.val])
    assert labels.bincount(minlength=10).min() > 300  # every class held out


# --- splits ------------------------------------------------------------------------------------


def test_val_split_is_disjoint_deterministic_and_seeded():
    train, val = split_indices(1000, 100, seed=0)
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    assert torch.equal(split_indices(1000, 100, seed=0)[1], val)
    assert not torch.equal(split_indices(1000, 100, seed=1)[1], val)


def test_val_size_rules():
    assert resolve_val_size(60000, None) == 5000
    assert resolve_val_size(50000, None) == 5000
    assert resolve_val_size(1000, None) == 100
    assert resolve_val_size(1000, 0.2) == 200
    assert resolve_val_size(1000, 7) == 7
    for bad in (0, 1000, -1, 0.0, 1.5, True, "10"):
        with pytest.raises(WidthSearchError):
            resolve_val_size(1000, bad)


def test_subsets_take_the_first_images(tmp_path):
    write_fashion(tmp_path, n_train=40, n_test=4)
    full = build_data("fashion-mnist", tmp_path, batch_size=64, val_size=10, augment=False)
    small = build_data("fashion-mnist", tmp_path, batch_size=64, val_size=10, subset=7,
                       val_subset=3, augment=False)
    assert (small.train_size, small.val_size) == (7, 3)
    assert torch.equal(small.train.labels, full.train.labels[:7])
    assert torch.equal(small.val.labels, full.val.labels[:3])
    with pytest.raises(WidthSearchError, match="subset"):
        build_data("fashion-mnist", tmp_path, batch_size=4, subset=0)


# --- CIFAR -------------------------------------------------------------------------------------


def test_cifar10_tiny_batches(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py")
    bundle = build_data("cifar10", tmp_path, batch_size=4, val_size=4, augment=False)
    assert (bundle.train_size, bundle.val_size, bundle.test_size) == (16, 4, 5)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, (32, 32))
    x = torch.cat([x for x, _ in bundle.test])
    y = torch.cat([y for _, y in bundle.test])
    expected = torch.from_numpy(batches["test_batch"][b"data"]).view(-1, 3, 32, 32)
    assert torch.equal(denormalize(x, bundle.mean, bundle.std), expected)
    assert y.tolist() == batches["test_batch"][b"labels"]
    train_x, train_y, _, _ = load_cifar("cifar10", tmp_path)
    assert train_x.shape == (20, 3, 32, 32)
    assert train_y[:4].tolist() == batches["data_batch_1"][b"labels"]


def test_cifar100_tiny_batches_via_env(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 30), ("test", 6)):
        batch = cifar_batch(n, b"fine_labels", 100, rng)
        batch[b"coarse_labels"] = [0] * n
        write_pickle(folder / name, batch)
    monkeypatch.setenv("WIDTHSEARCH_DATA", str(tmp_path))
    bundle = build_data("cifar100", batch_size=4)
    assert (bundle.train_size, bundle.val_size, bundle.test_size) == (27, 3, 6)
    assert bundle.num_classes == 100
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 32, 32) and y.max() < 100


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 wrote str, and numpy 1 names, like the real CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def test_cifar_python2_style_pickle(tmp_path):
    batches = write_cifar10(tmp_path / "cifar")
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(batches["test_batch"])
    raw = buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    (tmp_path / "cifar" / "test_batch").write_bytes(raw)
    _, _, test_x, test_y = load_cifar("cifar10", tmp_path / "cifar")
    assert torch.equal(test_x.flatten(1), torch.from_numpy(batches["test_batch"][b"data"]))
    assert test_y.tolist() == batches["test_batch"][b"labels"]


class Evil:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("call", [os.system, eval])
def test_restricted_unpickler_refuses_code(tmp_path, call):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "pwned"
    payload = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w')"
    write_pickle(folder / "data_batch_3", {b"data": Evil(call, payload), b"labels": [0]})
    with pytest.raises(WidthSearchError, match="refusing to unpickle"):
        build_data("cifar10", tmp_path, batch_size=4)
    assert not marker.exists()


def test_bad_cifar_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    write_pickle(folder / "test_batch", [1, 2, 3])
    with pytest.raises(WidthSearchError, match="is a dict"):
        load_cifar("cifar10", tmp_path)
    write_pickle(folder / "test_batch", {b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    with pytest.raises(WidthSearchError, match="3072"):
        load_cifar("cifar10", tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(WidthSearchError, match="not a readable"):
        load_cifar("cifar10", tmp_path)


# --- ImageFolder -------------------------------------------------------------------------------


def write_images(folder: Path, classes: dict[str, int], size: int = 12) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for cls, count in classes.items():
        (folder / cls).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")


def test_imagefolder(tmp_path):
    write_images(tmp_path / "train", {"cat": 6, "dog": 6})
    write_images(tmp_path / "val", {"cat": 2, "dog": 3})
    bundle = build_data("imagefolder", tmp_path, batch_size=4, val_size=2, image_size=8, workers=0)
    assert (bundle.train_size, bundle.val_size, bundle.test_size) == (10, 2, 5)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (2, 3, (8, 8))
    assert len(bundle.train) == 2  # drop_last
    batches = list(bundle.train)
    assert [x.shape for x, _ in batches] == [(4, 3, 8, 8)] * 2
    assert all(y.dtype == torch.int64 for _, y in batches)
    test_y = torch.cat([y for _, y in bundle.test])
    assert test_y.tolist() == [0, 0, 1, 1, 1]  # never shuffled
    assert example_input(bundle).shape == (1, 3, 8, 8)


def test_imagefolder_test_dir_and_workers(tmp_path):
    write_images(tmp_path / "imagenet" / "train", {"a": 4, "b": 4})
    write_images(tmp_path / "imagenet" / "test", {"a": 1, "b": 1})
    bundle = build_data("imagefolder", tmp_path, batch_size=3, val_size=2, image_size=(6, 10),
                        workers=2, drop_last=False)
    assert bundle.test_size == 2
    shapes = [x.shape for x, _ in bundle.train]
    assert shapes == [(3, 3, 6, 10), (3, 3, 6, 10)]


def test_imagefolder_class_mismatch(tmp_path):
    write_images(tmp_path / "train", {"cat": 3, "dog": 3})
    write_images(tmp_path / "val", {"cat": 1, "cow": 1})
    with pytest.raises(WidthSearchError, match="classes"):
        build_data("imagefolder", tmp_path, batch_size=2, workers=0)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "cifar100", "imagefolder"])
def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch, name):
    with pytest.raises(WidthSearchError, match="--data") as info:
        build_data(name, tmp_path, batch_size=4)
    assert str(tmp_path) in str(info.value) and "WIDTHSEARCH_DATA" in str(info.value)
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in str(info.value)
    monkeypatch.setenv("WIDTHSEARCH_DATA", str(tmp_path / "nothing-here"))
    with pytest.raises(WidthSearchError, match="not found"):
        build_data(name, batch_size=4)


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(WidthSearchError) as info:
        build_data("mnist", batch_size=4)
    assert all(name in str(info.value) for name in DATASETS)


# --- augmentation ------------------------------------------------------------------------------


def test_random_crop_flip_changes_images_keeps_shapes():
    x = torch.randint(0, 256, (64, 3, 10, 10), dtype=torch.uint8)
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):  # every output is a flipped-or-not window of the padded input
        windows = [padded[i, :, dy:dy + 10, dx:dx + 10] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    flips = random_crop_flip(x, 0, torch.Generator().manual_seed(0))
    same = [torch.equal(a, b) for a, b in zip(flips, x, strict=True)]
    assert all(s or torch.equal(a, b.flip(2)) for s, a, b in zip(same, flips, x, strict=True))
    assert 0 < sum(same) < len(x)


def test_loader_augmentation_changes_images_not_labels(tmp_path):
    write_fashion(tmp_path, n_train=40, n_test=4)
    plain = build_data("fashion-mnist", tmp_path, batch_size=8, augment=False)
    aug = build_data("fashion-mnist", tmp_path, batch_size=8, augment=True)
    for (xa, ya), (xp, yp) in zip(aug.train, plain.train, strict=True):
        assert torch.equal(ya, yp) and xa.shape == xp.shape
        assert not torch.equal(xa, xp)
    assert torch.equal(next(iter(aug.val))[0], next(iter(plain.val))[0])  # val never augments


# --- batching, resume, ranks -------------------------------------------------------------------


def test_loader_base_needs_a_load_hook():
    with pytest.raises(TypeError, match="_load"):
        _EpochLoader(10, 4, False, None, False, "cpu", 0, 1)


def test_batch_counts_and_drop_last():
    assert len(tiny_loader(10, 4, drop_last=True)) == 2
    assert len(tiny_loader(10, 4, drop_last=False)) == 3
    assert len(tiny_loader(3, 4, drop_last=True)) == 1  # never drops the only batch
    sizes = [len(y) for _, y in tiny_loader(10, 4, drop_last=False)]
    assert sizes == [4, 4, 2]


def test_each_epoch_is_a_new_permutation_and_covers_the_data():
    loader = tiny_loader(20, 5, augment=False)
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    assert all(sorted(e.tolist()) == list(range(20)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    assert loader.epoch == 2


def test_eval_loader_restarts_after_break():
    loader = tiny_loader(20, 5, shuffle=False, augment=False)
    for _ in loader:
        break
    assert torch.cat([y for _, y in loader]).tolist() == list(range(20))


@pytest.mark.parametrize("consumed", [0, 3, 6, 7, 9, 13])
def test_resume_yields_the_same_remaining_batches(tmp_path, consumed):
    # 50 images, batch 8 -> 7 batches per epoch; run 3 epochs in all.
    total = 3 * len(tiny_loader())
    expected = run(tiny_loader(), total)

    first = tiny_loader()
    head = run(first, consumed) if consumed else []
    torch.save(first.state_dict(), tmp_path / "loader.pt")
    resumed = tiny_loader(seed=99)  # a different seed: the state must carry everything
    resumed.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=True))
    tail = run(resumed, total - consumed)

    assert len(head) + len(tail) == len(expected)
    for (x, y), (ex, ey) in zip(head + tail, expected, strict=True):
        assert torch.equal(y, ey) and torch.equal(x, ex)


def test_resume_state_is_checked():
    state = tiny_loader(50, 8).state_dict()
    with pytest.raises(WidthSearchError, match="batch_size"):
        tiny_loader(50, 10).load_state_dict(state)
    with pytest.raises(WidthSearchError, match="size"):
        tiny_loader(40, 8).load_state_dict(state)


def test_folder_loader_resumes_in_the_same_order():
    dataset = torch.utils.data.TensorDataset(torch.randn(30, 2), torch.arange(30))

    def make(seed: int = 5) -> FolderLoader:
        return FolderLoader(dataset, 4, True, torch.Generator().manual_seed(seed), workers=0)

    expected = run(make(), 16)
    first = make()
    head = run(first, 10)
    resumed = make(seed=1)
    resumed.load_state_dict(first.state_dict())
    got = head + run(resumed, 6)
    assert all(torch.equal(y, ey) for (_, y), (_, ey) in zip(got, expected, strict=True))


@pytest.mark.parametrize("n", [30, 31])
def test_rank_shards_are_disjoint_and_cover(n):
    world = 3
    loaders = [tiny_loader(n, 4, augment=True, rank=r, world_size=world) for r in range(world)]
    assert len({len(loader) for loader in loaders}) == 1  # equal batch counts per rank
    for _ in range(2):  # two epochs: a fresh shared permutation each time
        shards = [torch.cat([y for _, y in loader]).tolist() for loader in loaders]
        seen = [i for shard in shards for i in shard]
        assert all(len(shard) == n // world for shard in shards)
        assert len(set(seen)) == len(seen) == world * (n // world)
        if n % world == 0:
            assert sorted(seen) == list(range(n))


def test_build_data_shards_train_only(tmp_path):
    write_fashion(tmp_path, n_train=40, n_test=4)
    bundles = [build_data("fashion-mnist", tmp_path, batch_size=4, val_size=10, rank=r,
                          world_size=2, augment=False, drop_last=False) for r in range(2)]
    shards = [{row.numpy().tobytes() for x, _ in b.train for row in x.flatten(1)} for b in bundles]
    assert len(shards[0]) == len(shards[1]) == 15 and shards[0].isdisjoint(shards[1])
    assert len(bundles[0].train) == len(bundles[1].train) == 4
    assert len(bundles[0].val) == len(bundles[1].val) == 3  # full val on every rank
    with pytest.raises(WidthSearchError, match="rank"):
        build_data("fashion-mnist", tmp_path, batch_size=4, rank=2, world_size=2)


def test_imagefolder_recalibration_images_are_unaugmented(tmp_path):
    """BN recalibration must see the images as they are scored (eval transforms), not the
    random resized crops and flips of training."""
    from PIL import Image

    from widthsearch.data import folder_transform

    write_images(tmp_path / "train", {"cat": 6, "dog": 6})
    write_images(tmp_path / "val", {"cat": 2, "dog": 2})
    bundle = build_data("imagefolder", tmp_path, batch_size=4, val_size=2, image_size=8,
                        workers=0, augment=True)
    first, second = list(bundle.recal), list(bundle.recal)
    assert sum(len(y) for _, y in first) == bundle.train_size  # every train image, none of val
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):  # no randomness at all
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    clean = folder_transform((8, 8), False, bundle.mean, bundle.std)
    view = bundle.recal.dataset
    path, _ = view.base.samples[view.indices[0]]
    assert torch.allclose(first[0][0][0], clean(Image.open(path).convert("RGB")))


def test_in_memory_recalibration_sample_is_fixed_and_from_train(tmp_path):
    write_fashion(tmp_path)
    bundle = build_data("fashion-mnist", tmp_path, batch_size=8, val_size=10, augment=True)
    first, second = list(bundle.recal), list(bundle.recal)
    assert sum(len(y) for _, y in first) == bundle.train_size
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))
    train = torch.cat([x for x, _ in bundle.train.__class__(  # the unaugmented train split
        bundle.train.images, bundle.train.labels, 1000, mean=bundle.mean, std=bundle.std)])
    recal = torch.cat([x for x, _ in first])
    assert sorted(map(hash, map(lambda t: t.numpy().tobytes(), recal))) == \
        sorted(map(hash, map(lambda t: t.numpy().tobytes(), train)))
