"""Dataset digests: equal content gives one digest, any changed pixel, label, class or sample gives another."""

from __future__ import annotations

import torch

from transfuse.data.base import ImageTensors
from transfuse.data.sources import ArraySource
from transfuse.data.streaming import StreamedSplit
from transfuse.tracking.datasets import content_digest


def _splits(seed: int = 0) -> dict[str, ImageTensors]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(12) % 3
    return {"train": ImageTensors(images[:8], labels[:8]), "test": ImageTensors(images[8:], labels[8:])}


def test_equal_content_gives_one_digest_and_any_change_another():
    names = ["a", "b", "c"]
    digest = content_digest(_splits(), names)
    assert digest == content_digest(_splits(), names) and len(digest) == 12
    pixel = _splits()
    pixel["train"].images[3, 0, 2, 2] ^= 1
    label = _splits()
    label["test"].labels[0] = 2 if int(label["test"].labels[0]) != 2 else 1
    moved = _splits()  # one image moved from train to test: the same pixels, other splits
    moved = {
        "train": ImageTensors(moved["train"].images[:7], moved["train"].labels[:7]),
        "test": ImageTensors(
            torch.cat([moved["train"].images[7:], moved["test"].images]),
            torch.cat([moved["train"].labels[7:], moved["test"].labels]),
        ),
    }
    others = [
        content_digest(pixel, names),
        content_digest(label, names),
        content_digest(moved, names),
        content_digest(_splits(), ["a", "b", "d"]),
        content_digest(_splits(seed=1), names),
    ]
    assert len({digest, *others}) == 6


def test_streamed_split_digest_follows_the_source_and_the_samples():
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    source = ArraySource(images)
    labels = torch.arange(10) % 2

    def digest(index: list[int], source=source) -> str:
        pick = torch.tensor(index)
        return content_digest({"train": StreamedSplit(source, pick, labels[pick], 4)}, ["x", "y"])

    assert digest([0, 1, 2, 3]) == digest([0, 1, 2, 3])
    assert digest([0, 1, 2, 3]) != digest([0, 1, 2, 5])
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    assert digest([0, 1, 2, 3]) != digest([0, 1, 2, 3], ArraySource(changed))
