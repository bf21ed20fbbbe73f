"""Datamodules: small datasets held in memory as uint8 tensors and transformed per batch on the device; image
folders, paired folders, torchvision sets and shards read into memory or streamed (:mod:`transfuse.data.streamable`)."""

from transfuse.data.base import ImageTensors, InMemoryImageDataModule
from transfuse.data.image_folder import ImageFolder
from transfuse.data.packaged import MNIST5k, UCIDigits
from transfuse.data.streamable import StreamableImageDataModule
from transfuse.data.streaming import UnreadableImages
from transfuse.data.synthetic import SyntheticShapes
from transfuse.data.torchvision_sets import TorchvisionDataset

__all__ = [
    "ImageFolder",
    "ImageTensors",
    "InMemoryImageDataModule",
    "MNIST5k",
    "StreamableImageDataModule",
    "SyntheticShapes",
    "TorchvisionDataset",
    "UCIDigits",
    "UnreadableImages",
]
