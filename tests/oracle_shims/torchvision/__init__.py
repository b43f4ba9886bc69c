"""Stand-in torchvision for the mosaicml-streaming test oracle (see ../README.md)."""

from torchvision import datasets, transforms

__all__ = ["datasets", "transforms"]
