"""Readable step-by-step output: a numbered header per step and its duration."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Console:
    """Prints ``[n/total] title`` headers, indented detail lines and per-step timings."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0
        self.started = time.monotonic()
        self.tty = sys.stdout.isatty()

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Announce a step; on success print how long it took (a failure propagates untouched)."""
        self.number += 1
        print(f"[{self.number}/{self.total}] {title}", flush=True)
        began = time.monotonic()
        yield
        print(f"      done in {time.monotonic() - began:.1f}s", flush=True)

    def info(self, text: str) -> None:
        print(f"      {text}", flush=True)

    def live(self, text: str) -> None:
        """A status line that a terminal rewrites in place; piped output gets one line each."""
        if self.tty:
            print(f"\r      {text}\x1b[K", end="", flush=True)
        else:
            print(f"      {text}", flush=True)

    def end_live(self) -> None:
        if self.tty:
            print(flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started
