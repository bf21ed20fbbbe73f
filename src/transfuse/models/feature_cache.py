"""Features of a frozen backbone, computed once per image and reused every epoch.

Entries are keyed by the exact content of the input image plus a key naming how it is prepared (the
datamodule's deterministic transform), so a different dataset, split or transform can never hit a stale entry,
and by a fingerprint of the backbone's weights, which clears the cache when they change. The cache prefers the
datamodule's raw uint8 images: hashing them is cheap, and an image that hits is never transformed at all.
Augmented inputs differ every epoch and would never hit, so the model turns augmentation off while it caches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

_WEIGHTS: dict[tuple[int, str], Tensor] = {}


def _hash_weights(width: int, device: torch.device) -> Tensor:
    """Two fixed random odd int64 vectors of ``width``: the coefficients of two polynomial hashes."""
    key = (width, str(device))
    if key not in _WEIGHTS:
        generator = torch.Generator().manual_seed(width)
        weights = torch.randint(-(2**62), 2**62, (width, 2), generator=generator, dtype=torch.int64) | 1
        _WEIGHTS[key] = weights.to(device)
    return _WEIGHTS[key]


def image_keys(images: Tensor) -> list[bytes]:
    """A 128-bit key per image from the exact bytes of its pixels (any dtype).

    Integer arithmetic (wrapping int64 products) is exact and independent of batch size or position, unlike
    a floating-point projection, so an image always gets the same key. The dtype is part of the key.
    """
    flat = images.detach().contiguous().view(len(images), -1).view(torch.uint8)
    if flat.shape[1] % 8:
        flat = torch.nn.functional.pad(flat, (0, 8 - flat.shape[1] % 8))
    words = flat.view(torch.int64)  # eight bytes per word
    weights = _hash_weights(words.shape[1], words.device)
    keys = torch.stack([(words * weights[:, 0]).sum(dim=1), (words * weights[:, 1]).sum(dim=1)], dim=1)
    tag = str(images.dtype).encode()
    return [tag + row.tobytes() for row in keys.cpu().numpy()]


def weights_fingerprint(module: nn.Module) -> str:
    """Digest of every parameter and buffer of ``module``."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Maps image content (and how it is prepared) to backbone features, valid for one set of weights."""

    def __init__(self) -> None:
        self.store: dict[bytes, Tensor] = {}
        self.weights: str | None = None
        self.hits = 0
        self.misses = 0

    def check_weights(self, backbone: nn.Module) -> None:
        """Clear the cache if the backbone's weights differ from those its entries were computed with."""
        fingerprint = weights_fingerprint(backbone)
        if fingerprint != self.weights:
            self.store.clear()
            self.weights = fingerprint

    @torch.no_grad()
    def __call__(
        self,
        backbone: nn.Module,
        images: Tensor,
        prepare: Callable[[Tensor], Tensor] | None = None,
        prepare_key: bytes = b"",
    ) -> Tensor:
        """Features of ``backbone(prepare(images))``; ``prepare_key`` must change whenever ``prepare`` does."""
        keys = [prepare_key + key for key in image_keys(images)]
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        if missing:
            inputs = images[missing]
            computed = backbone(prepare(inputs) if prepare is not None else inputs)
            for i, features in zip(missing, computed, strict=True):
                self.store[keys[i]] = features
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self.store[key] for key in keys])
