"""Retrying a call with exponential backoff and full jitter.

Storage backends wrap every remote operation in :func:`retry_call`; the streaming dataset reuses
it for shard downloads. Full jitter (a uniform draw from ``[0, min(cap, base * 2**retry)]``)
spreads the retries of many workers that failed at the same moment, which is what throttling
needs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

T = TypeVar("T")
OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry a failing operation.

    Attributes:
        retries: Number of retries after the first attempt (0 means try once).
        base: Upper bound, in seconds, of the first backoff; it doubles on each retry.
        cap: Largest upper bound, in seconds, of any single backoff.
    """

    retries: int = 5
    base: float = 0.25
    cap: float = 20.0

    def __post_init__(self) -> None:
        """Refuse negative settings."""
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.base < 0 or self.cap < 0:
            raise ValueError(f"backoff base and cap must be >= 0, got {self.base}, {self.cap}")

    @property
    def attempts(self) -> int:
        """The total number of attempts, the first one included."""
        return self.retries + 1

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The sleep before retry number ``retry`` (0-based), drawn with full jitter.

        Args:
            retry: 0 for the sleep before the first retry, 1 before the second, and so on.
            rand: A source of uniform floats in ``[0, 1)``; injectable for tests.

        Returns:
            Seconds to sleep, in ``[0, min(cap, base * 2**retry)]``.
        """
        # min() before the power would overflow for absurd retry counts; 2**62 is plenty.
        ceiling = min(self.cap, self.base * float(2 ** min(retry, 62)))
        return ceiling * rand()


class RetrySettings:
    """The retry fields a backend's frozen options dataclass carries, and the policy they make.

    A mixin without fields of its own (empty ``__slots__``), so the subclasses' fields, equality,
    ``repr`` and pickling are theirs alone.
    """

    __slots__ = ()
    retries: int
    backoff_base: float
    backoff_cap: float

    @property
    def retry_policy(self) -> RetryPolicy:
        """The policy of our retry loop around every operation."""
        return RetryPolicy(retries=self.retries, base=self.backoff_base, cap=self.backoff_cap)


def with_overrides(options: OptionsT, overrides: Mapping[str, Any]) -> OptionsT:
    """``options`` (a dataclass) with the ``overrides`` whose value is not ``None``."""
    return replace(options, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[type-var]


def retry_call(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_retryable: Callable[[BaseException], bool],
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, it raises a non-retryable error, or the retries run out.

    Args:
        fn: The operation; it is called again from scratch on each attempt.
        policy: Number of retries and backoff bounds.
        is_retryable: Says whether an exception raised by ``fn`` is worth another attempt.
        sleep: Sleeps between attempts; injectable for tests.
        on_retry: Called as ``on_retry(retry, exc, delay)`` before each sleep (for logging).

    Returns:
        What ``fn`` returned.

    Raises:
        Exception: The exception of the last attempt, unchanged, when it is not retryable or no
            retries are left. Callers map it to their own error types.
    """
    for retry in range(policy.retries + 1):
        try:
            return fn()
        except Exception as exc:
            if retry == policy.retries or not is_retryable(exc):
                raise
            delay = policy.delay(retry)
            if on_retry is not None:
                on_retry(retry, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
