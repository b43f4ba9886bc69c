"""Build hook for the loader's one optional C extension (metadata lives in pyproject.toml).

``mdsloader.ordering._shuffle_draws`` replays numpy's shuffle draws about six times faster than
numpy can (see its source); it is what lets a 10^9-sample epoch start in seconds. It is optional:
where no C compiler is available the build goes on without it and the loader uses numpy.
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
        )
    ]
)
