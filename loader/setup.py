"""Build hook for the loader's optional C extensions (metadata lives in pyproject.toml).

``mdsloader.ordering._shuffle_draws`` replays numpy's shuffle draws about five times faster than
numpy can (see its source); it is what lets a 10^9-sample epoch start in seconds.
``mdsloader._batch_columns`` does the per-object work of sending a user's list of sample dicts
from DataLoader workers as columns. ``mdsloader._gather`` copies a shuffled block of samples out
of the shards' mmaps with its memory misses overlapped. All are optional: where no C compiler is
available the build goes on without them and the loader does the same work in Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mdsloader.ordering._shuffle_draws",
            ["mdsloader/ordering/_shuffle_draws.c"],
            # No fused multiply-add: positions must round exactly as numpy's uniform does.
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        ),
        Extension(
            "mdsloader._batch_columns",
            ["mdsloader/_batch_columns.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "mdsloader._gather",
            ["mdsloader/_gather.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
    ]
)
