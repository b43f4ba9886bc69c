"""The quick start's REST client: submit a job, then follow it until it ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class ApiError(RuntimeError):
    """The API refused a request (the problem body's code and detail are in the message)."""


class JobClient:
    """A thin httpx client of ``/v1/jobs`` authenticated with one bearer token."""

    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def is_ready(self) -> bool:
        """Whether ``/readyz`` answers 200 (the API is up and reaches Redis)."""
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.http.post("/v1/jobs", json=body), expected=202)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}"), expected=200)

    def cancel(self, job_id: str) -> None:
        self.http.post(f"/v1/jobs/{job_id}/cancel")

    @staticmethod
    def _json(response: httpx.Response, *, expected: int) -> dict[str, Any]:
        if response.status_code != expected:
            raise ApiError(
                f"{response.request.method} {response.request.url.path}: "
                f"{response.status_code} {response.text[:2000]}"
            )
        body: dict[str, Any] = response.json()
        return body


def progress_text(job: dict[str, Any], elapsed: float, total_rows: int | None = None) -> str:
    """``running  rows 120,000/1,000,000  shards 3  partitions 1/8  12.3 MB  4.2s``."""
    p = job.get("progress") or {}
    rows = f"{p.get('rows_written', 0):,}" + (f"/{total_rows:,}" if total_rows else "")
    total = p.get("partitions_total") or 0
    # The worker starts its Spark session lazily: until it has planned the job, say so.
    if job["state"] == "running" and not total:
        return f"{'running':<10} preparing (Spark start-up, schema and null checks)  {elapsed:.1f}s"
    return (
        f"{job['state']:<10} rows {rows}  shards {p.get('shards_written', 0)}  "
        f"partitions {p.get('partitions_done', 0)}/{total or '?'}  "
        f"{p.get('bytes_written', 0) / 1e6:.1f} MB  {elapsed:.1f}s"
    )


def follow(
    client: JobClient,
    job_id: str,
    *,
    show: Callable[[str], None],
    check: Callable[[], None],
    total_rows: int | None = None,
    every_change: bool = True,
    interval: float = 0.5,
    quiet_for: float = 5.0,
) -> dict[str, Any]:
    """Poll the job until a final state, showing its progress.

    ``check`` runs between polls and raises if a service died. With ``every_change`` (a terminal
    that rewrites one line) any change is shown; otherwise only a new state or a finished
    partition, or a heartbeat line every ``quiet_for`` seconds, so piped output stays short.
    """
    started = time.monotonic()
    last_key: object = None
    last_shown = 0.0
    while True:
        job = client.get(job_id)
        now = time.monotonic()
        progress = job.get("progress") or {}
        key = (job["state"], progress if every_change else progress.get("partitions_done"))
        if key != last_key or now - last_shown >= quiet_for:
            show(progress_text(job, now - started, total_rows))
            last_key, last_shown = key, now
        if job["state"] in FINAL_STATES:
            return job
        check()
        time.sleep(interval)
