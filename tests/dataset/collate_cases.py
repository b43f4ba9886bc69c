"""Value cases shared by the collate and worker-transfer tests."""

from __future__ import annotations

import numpy as np

# Every numpy scalar type an MDS column decodes to.
SCALAR_TYPES = [
    np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.bool_,
]  # fmt: skip
# Per-sample array shapes, including empty axes and length-1 axes (odd strides live there).
ARRAY_SHAPES = [
    (), (0,), (5,), (2, 3), (3, 0), (0, 2), (3, 1, 1), (1, 1, 3), (2, 3, 4), (2, 1, 3, 1),
]  # fmt: skip
