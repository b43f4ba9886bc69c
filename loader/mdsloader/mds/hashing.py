"""File digests recorded in the index: every attribute-exposed hashlib algorithm and xxhash.

The names are exactly those the reference accepts (hashlib names except ``shake_*``, plus
``xxh32, xxh64, xxh128, xxh3_64, xxh3_128``); digests are ``hexdigest()`` with default parameters.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

from mdsloader.errors import HashError

__all__ = [
    "Digester", "check_hash_names", "hexdigest", "hexdigest_parts", "supported_hashes",
]


@functools.cache
def _constructors() -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {
        name: getattr(hashlib, name)
        for name in hashlib.algorithms_available
        if hasattr(hashlib, name) and not name.startswith("shake_")
    }
    for name in ("xxh32", "xxh64", "xxh128", "xxh3_64", "xxh3_128"):
        found[name] = getattr(xxhash, name)
    return found


def supported_hashes() -> list[str]:
    """Return the supported algorithm names, sorted."""
    return sorted(_constructors())


def hexdigest(algo: str, data: bytes | memoryview) -> str:
    """Return the lowercase hex digest of ``data`` under ``algo``.

    Raises:
        HashError: ``algo`` is not supported.
    """
    constructor = _constructors().get(algo)
    if constructor is None:
        raise HashError(f"unknown hash algorithm {algo!r}; supported: {supported_hashes()}")
    return constructor(data).hexdigest()


def hexdigest_parts(algo: str, parts: Iterable[bytes | memoryview]) -> str:
    """Return the hex digest of the concatenation of ``parts`` (no join needed).

    Raises:
        HashError: ``algo`` is not supported.
    """
    constructor = _constructors().get(algo)
    if constructor is None:
        raise HashError(f"unknown hash algorithm {algo!r}; supported: {supported_hashes()}")
    state = constructor()
    for part in parts:
        state.update(part)
    return state.hexdigest()


class Digester:
    """Several digests of one stream of bytes, updated piece by piece."""

    def __init__(self, algos: Iterable[str]) -> None:
        """Start one digest per algorithm.

        Raises:
            HashError: An algorithm is not supported.
        """
        self._states = {}
        for algo in algos:
            constructor = _constructors().get(algo)
            if constructor is None:
                raise HashError(f"unknown hash algorithm {algo!r}; supported: {supported_hashes()}")
            self._states[algo] = constructor()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next piece."""
        for state in self._states.values():
            state.update(data)
        self.size += len(data)

    def hexdigests(self) -> dict[str, str]:
        """Return ``{algo: hexdigest}`` of everything fed so far."""
        return {algo: state.hexdigest() for algo, state in self._states.items()}


def check_hash_names(names: Iterable[str] | None) -> list[str]:
    """Validate a writer's ``hashes`` argument and return it as a list.

    Raises:
        HashError: An unknown name, or names that are not sorted and unique.
    """
    result = list(names or [])
    for name in result:
        if not isinstance(name, str) or name not in _constructors():
            raise HashError(f"unknown hash algorithm {name!r}; supported: {supported_hashes()}")
    if result != sorted(set(result)):
        raise HashError(f"hashes must be sorted and unique, got {result}")
    return result
