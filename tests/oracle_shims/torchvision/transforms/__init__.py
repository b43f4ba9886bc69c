"""Stand-in torchvision.transforms for the test oracle."""

from torchvision.transforms import functional

__all__ = ["functional"]
