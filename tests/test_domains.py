"""The generated digit domains (syn_digits, mnist_m): deterministic by seed, balanced, built as the papers say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transfuse.data.digit_domains import (
    FONTS,
    MNISTM,
    SynDigits,
    blend_with_photos,
    font_dir,
    read_photos,
    syn_digit_arrays,
)
from transfuse.data.packaged import DIGIT_CLASSES, mnist5k_arrays
from transfuse.errors import ConfigError, DataError

KW = {"image_size": 32, "channels": 3, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


def _fresh(per_class: int, side: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    syn_digit_arrays.cache_clear()  # render again, not the cached tensors of an earlier call
    return syn_digit_arrays(per_class, side, seed)


def test_every_font_ships_with_matplotlib():
    assert all((font_dir() / name).is_file() for name in FONTS)
    assert len({name.split("-")[0].removesuffix(".ttf") for name in FONTS}) >= 3  # several families


def test_syn_digits_are_deterministic_by_seed_and_differ_across_seeds():
    images, labels = _fresh(3, 16, seed=0)
    again, labels_again = _fresh(3, 16, seed=0)
    other, _ = _fresh(3, 16, seed=1)
    assert images.dtype == torch.uint8 and images.shape == (30, 3, 16, 16)
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    assert not torch.equal(images, other)
    assert (images.float().flatten(1).std(1) > 5).all()  # no blank image: ink differs from the background


def test_syn_digits_have_the_requested_count_of_every_class():
    data = SynDigits(per_class=6, native_size=16, seed=2, train_per_class=2, **KW)
    assert data.class_names == DIGIT_CLASSES
    assert torch.bincount(data.load()[0]["train"].labels, minlength=10).tolist() == [6] * 10
    assert torch.bincount(data.splits["train"].labels, minlength=10).tolist() == [2] * 10


def test_syn_digits_refuse_a_font_that_is_not_there():
    with pytest.raises(ConfigError, match=r"nofont\.ttf"):
        SynDigits(per_class=2, fonts=["nofont.ttf"], **KW)


def test_blend_is_the_absolute_difference_per_channel():
    digits = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    digits[0, 0, 1:3, 1:3] = 255
    digits[1, 0, 0, 0] = 100
    photo = np.zeros((6, 6, 3), dtype=np.uint8)
    photo[..., 0], photo[..., 1], photo[..., 2] = 10, 200, 255  # one colour: every crop is the same
    out = blend_with_photos(digits, [photo], seed=0)
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.uint8
    expected = np.abs(photo[:4, :4].transpose(2, 0, 1)[None].astype(int) - digits.astype(int))
    np.testing.assert_array_equal(out, expected)


def test_mnist_m_is_mnist5k_on_photos_deterministic_by_seed():
    first = MNISTM(seed=0, **KW).load()[0]["train"]
    again = MNISTM(seed=0, **KW).load()[0]["train"]
    other = MNISTM(seed=1, **KW).load()[0]["train"]
    _, labels = mnist5k_arrays()
    assert first.images.shape == (5000, 3, 28, 28) and first.images.dtype == torch.uint8
    assert torch.equal(first.labels, torch.from_numpy(labels))  # image i is mnist5k's image i
    assert torch.equal(first.images, again.images) and not torch.equal(first.images, other.images)
    assert torch.bincount(first.labels).tolist() == [500] * 10


def test_mnist_m_reads_a_photo_folder_and_passes_over_unreadable_files(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "sub" / "black.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    photos = read_photos(tmp_path)
    assert len(photos) == 1 and photos[0].shape == (30, 40, 3)
    data = MNISTM(photos=str(tmp_path), train_per_class=3, **KW)
    digits, _ = mnist5k_arrays()
    # on a black photo |0 - digit| is the digit itself, in every channel
    assert torch.equal(data.load()[0]["train"].images, torch.from_numpy(digits).expand(-1, 3, -1, -1))
    assert torch.bincount(data.splits["train"].labels).tolist() == [3] * 10


def test_mnist_m_refuses_a_folder_without_a_readable_image(tmp_path):
    (tmp_path / "notes.txt").write_text("no photo here")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"data.photos={tmp_path} holds no readable image"):
        _ = MNISTM(photos=str(tmp_path), **KW).splits
    with pytest.raises(DataError, match="no such folder"):
        _ = MNISTM(photos=str(tmp_path / "missing"), **KW).splits
