"""Stand-in torchvision.transforms.functional for the test oracle."""

import numpy as np
import torch


def to_tensor(pic):
    array = np.asarray(pic, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())
