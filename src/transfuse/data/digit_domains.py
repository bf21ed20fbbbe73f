"""Two generated digit domains in the manner of Ganin et al. (2016), offline and deterministic by seed.

``syn_digits`` renders 0-9 from the TrueType fonts that ship inside matplotlib (their Syn Numbers drew Windows
fonts); ``mnist_m`` blends each mnist5k digit with a crop of a colour photo as ``|photo - digit|`` per channel
(their MNIST-M used BSDS500 photos; by default here scikit-learn's two sample photos stand in, so it is
MNIST-M-like, not MNIST-M).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from transfuse.data.base import ImageTensors, InMemoryImageDataModule
from transfuse.data.packaged import DIGIT_CLASSES, mnist5k_arrays
from transfuse.data.sources import UNREADABLE
from transfuse.errors import ConfigError, DataError

#: matplotlib's fonts with the ten digits at their ASCII code points: three families in several weights and slants
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
)
#: suffixes read from a ``photos`` folder
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=512)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_dir() / name), size)


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _draw_mask(digit: int, canvas: int, rng: np.random.Generator, fonts: tuple[str, ...]) -> np.ndarray:
    """The ink of one digit (and maybe a neighbour on either side, as in house-number crops) as float
    ``[canvas, canvas]`` in [0, 1]: random font, size, position, stroke width and rotation."""
    font = _font(fonts[int(rng.integers(len(fonts)))], int(canvas * rng.uniform(0.55, 0.9)))
    stroke = int(rng.integers(0, 3)) * canvas // 64
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    x = canvas / 2 + rng.uniform(-0.1, 0.1) * canvas
    y = canvas / 2 + rng.uniform(-0.1, 0.1) * canvas
    draw.text((x, y), str(digit), font=font, fill=255, anchor="mm", stroke_width=stroke, stroke_fill=255)
    advance = font.getlength(str(digit)) + rng.uniform(0.0, 0.15) * canvas
    for side_sign in (-1, 1):
        if rng.random() < 0.5:
            neighbour = str(int(rng.integers(10)))
            draw.text((x + side_sign * advance, y), neighbour, font=font, fill=255, anchor="mm", stroke_width=stroke)
    mask = mask.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, center=(x, y))
    return np.asarray(mask, dtype=np.float32) / 255.0


def _style(rng: np.random.Generator) -> np.ndarray:
    """Colours and blur of one image: foreground, background and gradient RGB (0-255), the gradient's direction
    and strength, and the blur's sigma as a share of the canvas. The foreground differs clearly in brightness from
    the background: a digit one cannot see is label noise."""
    background = rng.integers(0, 256, 3)
    foreground = rng.integers(0, 256, 3)
    while abs(_luma(foreground) - _luma(background)) < 70:
        foreground = rng.integers(0, 256, 3)
    other = rng.integers(0, 256, 3)
    extra = [rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.35), rng.uniform(0.0, 1.5) / 64]
    return np.concatenate([foreground, background, other, extra]).astype(np.float32)


def _paint(masks: Tensor, styles: Tensor, side: int) -> Tensor:
    """Masks ``[N, S, S]`` and styles ``[N, 12]`` -> uint8 ``[N, 3, side, side]``: ink over a gradient
    background, blurred by a per-image Gaussian, shrunk with antialiasing (all images at once)."""
    n, canvas = masks.shape[0], masks.shape[-1]
    fg, bg, other = styles[:, 0:3], styles[:, 3:6], styles[:, 6:9]
    direction, strength, sigma = styles[:, 9], styles[:, 10], styles[:, 11] * canvas
    coords = torch.linspace(-1, 1, canvas)
    ramp = (
        torch.cos(direction)[:, None, None] * coords[None, None, :]
        + torch.sin(direction)[:, None, None] * coords[None, :, None]
        + 1
    ) / 2
    ramp = (ramp * strength[:, None, None]).unsqueeze(1)
    back = bg[:, :, None, None] * (1 - ramp) + other[:, :, None, None] * ramp
    alpha = masks.unsqueeze(1)
    image = back * (1 - alpha) + fg[:, :, None, None] * alpha  # [N, 3, S, S]
    radius = 4
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # [N*3, K]
    flat = torch.nn.functional.pad(image.reshape(1, n * 3, canvas, canvas), (radius,) * 4, mode="replicate")
    flat = torch.nn.functional.conv2d(flat, kernel[:, None, None, :], groups=n * 3)
    flat = torch.nn.functional.conv2d(flat, kernel[:, None, :, None], groups=n * 3)
    image = flat.reshape(n, 3, canvas, canvas)
    small = torch.nn.functional.interpolate(image, size=(side, side), mode="bilinear", antialias=True)
    return small.round().clamp(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=4)
def syn_digit_arrays(per_class: int, side: int, seed: int, fonts: tuple[str, ...] = FONTS) -> tuple[Tensor, Tensor]:
    """``per_class`` rendered images of each digit (uint8 ``[10 * per_class, 3, side, side]``) and their labels;
    drawn at twice the side and shrunk. Cached, since a mix and a study ask for the same domain more than once
    in one process.

    Random per image: font, size, position, rotation, stroke width, neighbouring digits, foreground and
    background colours, a background gradient, and blur. Everything comes from one seeded generator, so a seed
    fixes every pixel.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    masks, styles = [], []
    for d in labels:
        masks.append(_draw_mask(int(d), 2 * side, rng, fonts))
        styles.append(_style(rng))
    images = []
    for start in range(0, len(labels), 512):  # bounded memory for the grouped blur
        chunk = slice(start, start + 512)
        images.append(_paint(torch.from_numpy(np.stack(masks[chunk])), torch.from_numpy(np.stack(styles[chunk])), side))
    return torch.cat(images), torch.from_numpy(labels)


class SynDigits(InMemoryImageDataModule):
    """Digits 0-9 rendered from matplotlib's fonts with random placement, colours, stroke and blur (Syn Numbers).

    Args:
        per_class: images per digit before splitting.
        native_size: side the digits are rendered at.
        seed: fixes every pixel (not the run's seed, so every run of a study sees the same domain).
        fonts: file names under matplotlib's ``mpl-data/fonts/ttf`` (default :data:`FONTS`).
    """

    def __init__(
        self,
        per_class: int = 500,
        native_size: int = 32,
        seed: int = 0,
        fonts: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if per_class < 1 or native_size < 8:
            raise ConfigError(f"syn_digits needs per_class >= 1 and native_size >= 8, got {per_class}, {native_size}")
        self.fonts = tuple(fonts) if fonts else FONTS
        missing = [f for f in self.fonts if not (font_dir() / f).is_file()]
        if missing:
            raise ConfigError(f"fonts {missing} are not in {font_dir()}")
        self.per_class, self.native_size, self.seed = per_class, native_size, seed

    def describe(self) -> str:
        return f"syn_digits (seed {self.seed})"

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        images, labels = syn_digit_arrays(self.per_class, self.native_size, self.seed, self.fonts)
        return {"train": ImageTensors(images.clone(), labels.clone())}, DIGIT_CLASSES


def read_photos(folder: str | Path | None) -> list[np.ndarray]:
    """RGB photos as ``uint8 [H, W, 3]`` arrays: every readable image under ``folder`` (recursively), or
    scikit-learn's two sample photos when ``folder`` is None. Unreadable files are passed over; a folder
    without one readable image is an error."""
    if folder is None:
        from sklearn.datasets import load_sample_images

        return [np.asarray(image, dtype=np.uint8) for image in load_sample_images().images]
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"data.photos={folder}: no such folder")
    photos = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES):
        try:
            with Image.open(path) as img:
                photos.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        except UNREADABLE:
            continue
    if not photos:
        raise DataError(f"data.photos={folder} holds no readable image ({', '.join(PHOTO_SUFFIXES)})")
    return photos


def blend_with_photos(digits: np.ndarray, photos: list[np.ndarray], seed: int) -> np.ndarray:
    """MNIST-M's recipe: each grey digit ``[N, 1, H, W]`` against a random crop of a random photo, as
    ``|crop - digit|`` per channel; returns uint8 ``[N, 3, H, W]``."""
    rng = np.random.default_rng(seed)
    n, _, h, w = digits.shape
    small = [p for p in photos if p.shape[0] < h or p.shape[1] < w]
    if small:
        raise DataError(f"{len(small)} photos are smaller than the {h}x{w} digits they should lie under")
    out = np.empty((n, 3, h, w), dtype=np.uint8)
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        top, left = int(rng.integers(photo.shape[0] - h + 1)), int(rng.integers(photo.shape[1] - w + 1))
        crop = photo[top : top + h, left : left + w].transpose(2, 0, 1).astype(np.int16)
        out[i] = np.abs(crop - digits[i].astype(np.int16)).astype(np.uint8)
    return out


class MNISTM(InMemoryImageDataModule):
    """mnist5k's digits blended with crops of colour photos (Ganin et al.'s MNIST-M recipe); image ``i`` is
    mnist5k's image ``i``, so the same ``split_seed`` splits both alike.

    Args:
        photos: a folder of colour photos (BSDS500 for the paper's MNIST-M), or None for scikit-learn's two
            sample photos (MNIST-M-like: fewer, larger textures).
        seed: fixes the photo and crop of every digit.
    """

    def __init__(self, photos: str | None = None, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.photos, self.seed = photos, seed

    def describe(self) -> str:
        return f"mnist_m (photos {self.photos or 'sklearn sample images'}, seed {self.seed})"

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        digits, labels = mnist5k_arrays()
        images = blend_with_photos(digits, read_photos(self.photos), self.seed)
        return {"train": ImageTensors(torch.from_numpy(images), torch.from_numpy(labels.copy()))}, DIGIT_CLASSES
