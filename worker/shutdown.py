"""Graceful shutdown: ``SIGTERM`` hands running jobs back to the queue and exits in bounded time.

What Kubernetes and compose send is ``SIGTERM`` to the worker's main process. Celery answers it
with a *warm* shutdown (stop consuming, wait for running tasks however long they take); this module
makes the wait short and bounded:

1. The first ``SIGTERM`` sets :attr:`Shutdown.requested` in the main process and forwards
   ``SIGUSR2`` to the prefork pool's children (which run the tasks there), where it sets the same
   flag. A running job's watcher sees the flag, cancels its Spark job group (the conversion removes
   what it wrote) and the task hands the job back to the queue at once (a new message, so the job
   does not wait for the broker's visibility timeout), releasing its leases. The task then ends,
   and Celery's warm shutdown completes.
2. A timer started by the first signal, or a second ``SIGTERM``, exits hard: the jobs still running
   are published to the queue again (another worker takes them once their job lease expires), the
   pool's children are killed, and the process leaves with ``os._exit``. Spark's JVM exits when its
   driver's pipe closes. The unacknowledged original messages stay redeliverable as after a crash.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("worker.shutdown")
CHILD_SIGNAL = signal.SIGUSR2
HARD_EXIT_CODE = 1


class Shutdown:
    """The process's shutdown state: a flag that running jobs watch, and the hard-exit timer."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._signals = 0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def begin(
        self,
        timeout: float,
        *,
        notify_children: Callable[[], None] = lambda: None,
        hard_exit: Callable[[], None] | None = None,
    ) -> None:
        """A shutdown signal arrived: the first starts a bounded graceful stop, the next exits hard.

        Called from a signal handler: it only sets a flag, sends signals and starts a thread.
        """
        with self._lock:
            self._signals += 1
            first = self._signals == 1
        exit_now = hard_exit or self.hard_exit
        if not first:
            exit_now()
            return
        self.requested.set()
        try:
            notify_children()
        except Exception:  # never let the signal handler fail: the timer still bounds the exit
            log.exception("shutdown.notify_children_failed")
        self._timer = threading.Timer(timeout, exit_now)
        self._timer.daemon = True
        self._timer.start()

    def hard_exit(self) -> None:
        os._exit(HARD_EXIT_CODE)

    def reset(self) -> None:
        """Forget a shutdown (tests; a fresh pool child)."""
        with self._lock:
            self._signals = 0
            self.requested.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


SHUTDOWN = Shutdown()


def install_child_handler(shutdown: Shutdown = SHUTDOWN) -> None:
    """In a pool child: ``SIGUSR2`` from the main process means "shutting down"."""
    shutdown.reset()  # a forked child must not inherit the parent's state

    def handler(_signum: int, _frame: Any) -> None:
        shutdown.requested.set()

    signal.signal(CHILD_SIGNAL, handler)


def pool_child_pids(worker: Any) -> list[int]:
    """The prefork pool's child processes of a Celery ``WorkController`` (none for solo/threads)."""
    inner = getattr(getattr(worker, "pool", None), "_pool", None)
    processes = getattr(inner, "_pool", None) or []
    return [p.pid for p in processes if getattr(p, "pid", None)]


def signal_children(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
