"""Open a dataset by the id of the mds-convert job that produced it.

A training pod often knows a conversion job id rather than where its output landed::

    from mdsloader import StreamingDataset
    from mdsloader.jobs import remote_for_job

    remote = remote_for_job(job_id, wait=True)   # MDS_CONVERT_URL / MDS_CONVERT_TOKEN
    dataset = StreamingDataset(remote=remote, local="/cache/x", batch_size=32)

Needs the ``jobs`` extra (httpx), imported only when a job is looked up. Errors map onto the
loader's tree: an unknown job is :class:`~mdsloader.errors.ObjectNotFoundError`, a refused token
:class:`~mdsloader.errors.AccessDeniedError`, an unreachable service
:class:`~mdsloader.errors.StorageUnavailableError`; a job that failed or was cancelled raises
:class:`JobFailedError`, and waiting too long :class:`JobWaitTimeout`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from mdsloader.errors import (
    AccessDeniedError,
    MDSError,
    MissingExtraError,
    ObjectNotFoundError,
    StorageUnavailableError,
)

DEFAULT_URL = "http://127.0.0.1:8000"
_PENDING = frozenset({"queued", "running"})


class JobFailedError(MDSError):
    """The job ended without a dataset (failed, cancelled, or being cancelled)."""

    def __init__(self, job_id: str, state: str, code: str | None, message: str | None) -> None:
        super().__init__(job_id, state, code, message)
        self.job_id, self.state, self.code, self.message = job_id, state, code, message

    def __str__(self) -> str:
        reason = f": {self.code}: {self.message}" if self.code else ""
        return f"conversion job {self.job_id} is {self.state}{reason}"


class JobWaitTimeout(MDSError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait."""


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise MissingExtraError(
            "looking up conversion jobs needs httpx: pip install 'mds-loader[jobs]'"
        ) from exc
    return httpx


class JobClient:
    """A small client of the mds-convert REST API (only what training pods need).

    Args:
        url: The service's base URL; default ``MDS_CONVERT_URL`` or ``http://127.0.0.1:8000``.
        token: The bearer token; default ``MDS_CONVERT_TOKEN``.
        timeout: Seconds per HTTP request.
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0
    ) -> None:
        httpx = _httpx()
        token = token if token is not None else os.environ.get("MDS_CONVERT_TOKEN")
        self.url = url or os.environ.get("MDS_CONVERT_URL") or DEFAULT_URL
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._transport_error = httpx.TransportError

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job record (``GET /v1/jobs/{id}``).

        Raises:
            ObjectNotFoundError: no such job.
            AccessDeniedError: the token was refused.
            StorageUnavailableError: the service cannot be reached or answers 5xx.
        """
        try:
            response = self._http.get(f"/v1/jobs/{job_id}")
        except self._transport_error as exc:
            raise StorageUnavailableError(f"cannot reach mds-convert at {self.url}: {exc}") from exc
        if response.status_code == 200:
            return response.json()
        detail = _detail(response)
        if response.status_code == 404:
            raise ObjectNotFoundError(f"no conversion job {job_id!r} at {self.url}: {detail}")
        if response.status_code in (401, 403):
            raise AccessDeniedError(f"mds-convert refused the token: {detail}")
        raise StorageUnavailableError(f"mds-convert answered {response.status_code}: {detail}")

    def wait(
        self, job_id: str, *, timeout: float | None = None, poll_interval: float = 2.0
    ) -> dict[str, Any]:
        """Poll until the job leaves ``queued``/``running``; returns the final record.

        Raises:
            JobWaitTimeout: still pending after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job["state"] not in _PENDING:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise JobWaitTimeout(
                    f"conversion job {job_id} still {job['state']} after {timeout}s"
                )
            time.sleep(poll_interval)

    def remote_for_job(
        self,
        job_id: str,
        *,
        wait: bool = False,
        timeout: float | None = None,
        poll_interval: float = 2.0,
    ) -> str:
        """The remote URL of the dataset the job published (see :func:`remote_for_job`)."""
        job = (
            self.wait(job_id, timeout=timeout, poll_interval=poll_interval)
            if wait
            else (self.get_job(job_id))
        )
        if job["state"] == "succeeded":
            return _remote_of(job)
        if job["state"] in _PENDING:
            raise JobFailedError(job_id, job["state"], "not_finished", "pass wait=True to wait")
        error = job.get("error") or {}
        raise JobFailedError(job_id, job["state"], error.get("code"), error.get("message"))


def remote_for_job(
    job_id: str,
    *,
    url: str | None = None,
    token: str | None = None,
    wait: bool = False,
    timeout: float | None = None,
    poll_interval: float = 2.0,
) -> str:
    """Return the remote URL (``remote=`` for ``StreamingDataset``) of a conversion job's dataset.

    Args:
        job_id: The id returned by ``POST /v1/jobs``.
        url: The service's base URL; default ``MDS_CONVERT_URL``.
        token: The bearer token; default ``MDS_CONVERT_TOKEN``.
        wait: Wait for a queued or running job to finish instead of failing at once.
        timeout: With ``wait``, the most seconds to wait (None: no limit).
        poll_interval: With ``wait``, seconds between polls.

    Returns:
        The dataset's directory URL, e.g. ``s3://datasets/events/v3``.

    Raises:
        JobFailedError: the job failed, was cancelled, or (without ``wait``) is not finished.
        JobWaitTimeout: ``wait`` ran past ``timeout``.
        ObjectNotFoundError: no such job.
        AccessDeniedError: the token was refused.
        StorageUnavailableError: the service cannot be reached.
        MissingExtraError: httpx (the ``jobs`` extra) is not installed.
    """
    with JobClient(url, token) as client:
        return client.remote_for_job(
            job_id, wait=wait, timeout=timeout, poll_interval=poll_interval
        )


def _remote_of(job: dict[str, Any]) -> str:
    index_url = (job.get("result") or {}).get("index_url") or ""
    if index_url.endswith("/index.json"):
        return index_url[: -len("/index.json")]
    return job["request"]["target"]


def _detail(response: Any) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:200]
