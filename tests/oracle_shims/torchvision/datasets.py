"""Names the reference's vision module imports; never used by our tests."""

from torch.utils.data import Dataset


class VisionDataset(Dataset):
    def __init__(self, root=None, transforms=None, transform=None, target_transform=None):
        self.root = root
        self.transforms = transforms
        self.transform = transform
        self.target_transform = target_transform


class CIFAR10(VisionDataset):
    pass
