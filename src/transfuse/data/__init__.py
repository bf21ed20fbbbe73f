"""Datamodules: every dataset is held in memory as uint8 tensors and transformed per batch on the device."""

from transfuse.data.base import ImageTensors, InMemoryImageDataModule
from transfuse.data.image_folder import ImageFolder
from transfuse.data.packaged import MNIST5k, UCIDigits
from transfuse.data.synthetic import SyntheticShapes
from transfuse.data.torchvision_sets import TorchvisionDataset

__all__ = [
    "ImageFolder",
    "ImageTensors",
    "InMemoryImageDataModule",
    "MNIST5k",
    "SyntheticShapes",
    "TorchvisionDataset",
    "UCIDigits",
]
