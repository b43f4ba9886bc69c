"""Job records and their store: the one source of truth shared by the API and the worker.

A record lives as JSON under ``<prefix>:job:<id>`` in Redis. It changes only through atomic
compare-and-set transitions (``WATCH``/``MULTI``) from an expected state, along the edges of
``TRANSITIONS``; each transition is appended to the record's ``transitions`` log so that tests (and
operators) can see that no impossible edge was ever taken.

Indexes (sorted sets with score 0, ordered by member, because job ids sort by creation time):
``<prefix>:jobs`` (every job) and ``<prefix>:state:<state>`` (one per state). ``<prefix>:outbox``
holds jobs stored but not yet handed to the broker, so that an enqueue that failed is retried.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

import redis
from pydantic import BaseModel, ConfigDict, Field

from worker.convert.rowspec import Condition, Splits


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# running -> running is a redelivery (the previous worker died); it bumps `attempts`.
# cancelling -> succeeded | failed records the truth when a conversion finished (published, or
# failed) before it could notice the cancel request.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLING}),
    JobState.RUNNING: frozenset(
        {JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLING}
    ),
    JobState.CANCELLING: frozenset({JobState.CANCELLED, JobState.SUCCEEDED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# States that count against a principal's quota of active jobs.
ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING)


def is_allowed(source: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[source]


class JobStoreError(Exception):
    """Base of the store's domain errors (never an HTTP status: the API maps them)."""


class JobNotFoundError(JobStoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class InvalidTransitionError(JobStoreError):
    def __init__(self, job_id: str, current: JobState, target: JobState) -> None:
        super().__init__(job_id, current, target)
        self.job_id, self.current, self.target = job_id, current, target

    def __str__(self) -> str:
        return f"job {self.job_id}: cannot go from {self.current} to {self.target}"


class QuotaExceededError(JobStoreError):
    """The principal already has ``limit`` queued or running jobs."""

    def __init__(self, principal: str, active: int, limit: int) -> None:
        super().__init__(principal, active, limit)
        self.principal, self.active, self.limit = principal, active, limit


class IdempotencyConflictError(JobStoreError):
    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(key, job_id)
        self.key, self.job_id = key, job_id


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    """A 28-hex-char id that sorts by creation time (ms), then randomly within a millisecond."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobRequest(_Model):
    """A validated, normalised conversion request (as stored and as returned by the API)."""

    source_table: str
    target: str
    compression: str | None = "zstd"
    hashes: list[str] = Field(default_factory=lambda: ["xxh64"])
    size_limit: int = 1 << 26
    columns: dict[str, str | None] | None = None
    partitions: int | None = None
    mode: Literal["error", "overwrite", "append"] = "error"
    # MDS has no null: nulls fail the job unless the request skips those rows or fills them.
    null_policy: Literal["error", "skip", "fill"] = "error"
    fill_values: dict[str, Any] = Field(default_factory=dict)
    # Only the rows where every condition holds (structured, never SQL; see rowspec).
    filter: list[Condition] | None = None
    # POSTed the job when it reaches a final state (see worker.callbacks).
    callback_url: str | None = None
    # One dataset per part under <target>/<part>/, rows assigned by a stable hash.
    splits: Splits | None = None

    def fingerprint(self) -> str:
        """A digest of the normalised request, to compare idempotent submissions."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class JobProgress(_Model):
    rows_written: int = 0
    shards_written: int = 0
    bytes_written: int = 0
    partitions_done: int = 0
    partitions_total: int = 0
    # Where the conversion is (e.g. "starting_spark" while a fresh worker's Spark starts) and
    # which read path runs ("direct" or "spark"); see worker.convert.model.ConversionProgress.
    phase: str | None = None
    read_path: str | None = None


class JobResult(_Model):
    index_url: str
    samples: int
    shards: int
    raw_bytes: int
    zip_bytes: int
    columns: dict[str, str]
    read_path: str | None = None  # "direct" (pyarrow on the executors) or "spark" (mapInArrow)
    read_path_reason: str | None = None
    # mode "append": what the job added (samples and shards above are the new totals).
    added_samples: int | None = None
    added_shards: int | None = None
    # splits: each part's result (index_url, samples, shards, raw_bytes, zip_bytes, added_*);
    # index_url above is then the target root holding the parts, and the counts are totals.
    splits: dict[str, dict[str, Any]] | None = None


class JobError(_Model):
    code: str
    message: str
    retryable: bool = False


class CallbackAttempt(_Model):
    """One delivery attempt of the job's completion callback."""

    attempt: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    delivered: bool = False
    gave_up: bool = False


class TransitionEntry(_Model):
    """One edge taken by the record (``from`` is a keyword, hence ``source``/``target``)."""

    source: JobState | None
    target: JobState
    at: datetime
    attempt: int
    # Who asked for this edge (the submitting or cancelling principal); None for the worker.
    actor: str | None = None


class JobWait(_Model):
    """Why a job is not running yet: its target is owned by another job (``holder``), or its
    worker handed it back to the queue while shutting down."""

    reason: str
    holder: str | None = None
    since: datetime


class JobRecord(_Model):
    id: str
    state: JobState = JobState.QUEUED
    request: JobRequest
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    result: JobResult | None = None
    error: JobError | None = None
    attempts: int = 0
    # The principal that submitted the job (None for records from before principals existed).
    principal: str | None = None
    # Delivery attempts of request.callback_url, oldest first.
    callbacks: list[CallbackAttempt] = Field(default_factory=list)
    transitions: list[TransitionEntry] = Field(default_factory=list)
    # Set while the job waits for its target (see worker.target_lease); cleared when it runs.
    waiting: JobWait | None = None

    @classmethod
    def new(cls, request: JobRequest, principal: str | None = None) -> JobRecord:
        now = utcnow()
        entry = TransitionEntry(
            source=None, target=JobState.QUEUED, at=now, attempt=0, actor=principal
        )
        return cls(
            id=new_job_id(),
            request=request,
            created_at=now,
            updated_at=now,
            principal=principal,
            transitions=[entry],
        )

    def moved_to(self, target: JobState, actor: str | None = None) -> JobRecord:
        """A copy in state ``target`` (edge checked), with timestamps and the transition log."""
        if not is_allowed(self.state, target):
            raise InvalidTransitionError(self.id, self.state, target)
        now = utcnow()
        record = self.model_copy(deep=True)
        if target is JobState.RUNNING:
            record.attempts += 1
            record.started_at = record.started_at or now
        if target in FINAL_STATES:
            record.finished_at = now
        record.transitions.append(
            TransitionEntry(
                source=self.state, target=target, at=now, attempt=record.attempts, actor=actor
            )
        )
        record.state, record.updated_at = target, now
        return record


Mutation = Callable[[JobRecord], None]


class JobStore(Protocol):
    """Where job records live. Every state change is a compare-and-set transition."""

    def ping(self) -> None: ...

    def create(
        self,
        record: JobRecord,
        *,
        idempotency_key: str | None = None,
        active_limit: int | None = None,
    ) -> tuple[JobRecord, bool]: ...

    def get(self, job_id: str) -> JobRecord: ...

    def list(
        self,
        *,
        state: JobState | None = None,
        limit: int = 50,
        cursor: str | None = None,
        principal: str | None = None,
    ) -> tuple[list[JobRecord], str | None]: ...

    def transition(
        self,
        job_id: str,
        target: JobState,
        *,
        expected: Collection[JobState],
        mutate: Mutation | None = None,
        actor: str | None = None,
    ) -> JobRecord: ...

    def update(
        self, job_id: str, mutate: Mutation, *, expected: Collection[JobState]
    ) -> JobRecord | None: ...

    def pending_enqueue(self, older_than: float) -> list[str]: ...

    def mark_enqueued(self, job_id: str) -> None: ...

    def count_by_state(self) -> dict[JobState, int]: ...


class RedisJobStore:
    """The Redis implementation of :class:`JobStore`."""

    def __init__(
        self, client: redis.Redis, *, prefix: str = "mdsconvert", idempotency_ttl: int = 86400
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.idempotency_ttl = idempotency_ttl
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._renew = client.register_script(_RENEW_LUA)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "mdsconvert") -> RedisJobStore:
        # Short timeouts: a dead Redis must turn into a quick 503, not a hung request.
        client = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
        )
        return cls(client, prefix=prefix)

    # keys
    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def state_key(self, state: JobState) -> str:
        return f"{self.prefix}:state:{state}"

    @property
    def all_key(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def outbox_key(self) -> str:
        return f"{self.prefix}:outbox"

    @property
    def metrics_key(self) -> str:
        """A hash of counters (see ``worker.metrics``)."""
        return f"{self.prefix}:metrics"

    def lease_key(self, job_id: str) -> str:
        return f"{self.prefix}:lease:{job_id}"

    @property
    def callbacks_key(self) -> str:
        """Jobs whose completion callback is due, scored by the time of the next attempt."""
        return f"{self.prefix}:callbacks"

    def owner_key(self, principal: str, state: JobState | None = None) -> str:
        """A principal's jobs (all of them, or those in ``state``): listing and quotas."""
        return f"{self.prefix}:owner:{principal}:" + (f"state:{state}" if state else "jobs")

    def _index_keys(self, record: JobRecord, state: JobState) -> list[str]:
        keys = [self.state_key(state)]
        if record.principal is not None:
            keys.append(self.owner_key(record.principal, state))
        return keys

    def ping(self) -> None:
        self.client.ping()

    def create(
        self,
        record: JobRecord,
        *,
        idempotency_key: str | None = None,
        active_limit: int | None = None,
    ) -> tuple[JobRecord, bool]:
        """Store a new record (and its outbox entry); an idempotent replay returns the original.

        Args:
            active_limit: refuse the job when its principal already has this many queued,
                running or cancelling jobs. Checked in the same transaction as the write, so
                concurrent submissions cannot both slip under the limit.

        Returns:
            ``(record, created)``; ``created`` is False when ``idempotency_key`` matched an
            earlier submission with the same request.

        Raises:
            IdempotencyConflictError: the key was used with a different request.
            QuotaExceededError: over ``active_limit``.
        """
        idem_key = f"{self.prefix}:idem:{idempotency_key}" if idempotency_key else None
        fingerprint = record.request.fingerprint()
        quota_keys = (
            [self.owner_key(record.principal, s) for s in ACTIVE_STATES]
            if active_limit is not None and record.principal is not None
            else []
        )

        def attempt(pipe: redis.client.Pipeline) -> tuple[JobRecord, bool]:
            if idem_key is not None:
                existing = pipe.get(idem_key)
                if existing is not None:
                    job_id, _, seen = existing.decode().partition(" ")
                    if seen != fingerprint:
                        raise IdempotencyConflictError(idempotency_key or "", job_id)
                    return self._load(pipe.get(self.job_key(job_id)), job_id), False
            if quota_keys and active_limit is not None:
                active = sum(int(pipe.zcard(key)) for key in quota_keys)
                if active >= active_limit:
                    raise QuotaExceededError(record.principal or "", active, active_limit)
            pipe.multi()
            pipe.set(self.job_key(record.id), record.model_dump_json())
            pipe.zadd(self.all_key, {record.id: 0})
            for key in self._index_keys(record, record.state):
                pipe.zadd(key, {record.id: 0})
            if record.principal is not None:
                pipe.zadd(self.owner_key(record.principal), {record.id: 0})
            pipe.zadd(self.outbox_key, {record.id: time.time()})
            if idem_key is not None:
                pipe.set(idem_key, f"{record.id} {fingerprint}", ex=self.idempotency_ttl)
            return record, True

        watches = [k for k in (idem_key, *quota_keys) if k]
        return self.client.transaction(attempt, *watches, value_from_callable=True)

    def count_active(self, principal: str) -> int:
        """The principal's queued, running and cancelling jobs."""
        pipe = self.client.pipeline(transaction=False)
        for state in ACTIVE_STATES:
            pipe.zcard(self.owner_key(principal, state))
        return sum(pipe.execute())

    def get(self, job_id: str) -> JobRecord:
        return self._load(self.client.get(self.job_key(job_id)), job_id)

    def list(
        self,
        *,
        state: JobState | None = None,
        limit: int = 50,
        cursor: str | None = None,
        principal: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first; ``cursor`` is the last id of the previous page (exclusive).

        ``principal`` restricts the page to that principal's jobs.
        """
        if principal is not None:
            key = self.owner_key(principal, state)
        else:
            key = self.state_key(state) if state else self.all_key
        upper = f"({cursor}" if cursor else "+"
        ids = [i.decode() for i in self.client.zrevrangebylex(key, upper, "-", 0, limit + 1)]
        page, more = ids[:limit], len(ids) > limit
        raws = self.client.mget([self.job_key(i) for i in page]) if page else []
        # A record deleted between the two reads is skipped rather than failing the page.
        records = [self._load(raw, i) for i, raw in zip(page, raws) if raw is not None]
        return records, (page[-1] if more else None)

    def transition(
        self,
        job_id: str,
        target: JobState,
        *,
        expected: Collection[JobState],
        mutate: Mutation | None = None,
        actor: str | None = None,
    ) -> JobRecord:
        """Atomically move a job from one of ``expected`` to ``target`` and apply ``mutate``.

        ``actor`` is recorded on the transition (the principal that asked for it).

        Raises:
            JobNotFoundError: no such job.
            InvalidTransitionError: the job is not in an expected state, or the edge is not allowed.
        """
        key = self.job_key(job_id)

        def attempt(pipe: redis.client.Pipeline) -> JobRecord:
            current = self._load(pipe.get(key), job_id)
            if current.state not in expected:
                raise InvalidTransitionError(job_id, current.state, target)
            record = current.moved_to(target, actor)
            if mutate is not None:
                mutate(record)
            pipe.multi()
            pipe.set(key, record.model_dump_json())
            for old in self._index_keys(current, current.state):
                pipe.zrem(old, job_id)
            for new in self._index_keys(record, target):
                pipe.zadd(new, {job_id: 0})
            if target in FINAL_STATES:  # counted here so that every path to a final state counts
                pipe.hincrby(self.metrics_key, f"finished:{target}", 1)
                if record.request.callback_url:  # the callback outbox, atomic with the state
                    pipe.zadd(self.callbacks_key, {job_id: time.time()})
            return record

        return self.client.transaction(attempt, key, value_from_callable=True)

    def update(
        self, job_id: str, mutate: Mutation, *, expected: Collection[JobState]
    ) -> JobRecord | None:
        """Change non-state fields (progress) only while the job is in ``expected``; else None."""
        key = self.job_key(job_id)

        def attempt(pipe: redis.client.Pipeline) -> JobRecord | None:
            record = self._load(pipe.get(key), job_id)
            if record.state not in expected:
                return None
            mutate(record)
            record.updated_at = utcnow()
            pipe.multi()
            pipe.set(key, record.model_dump_json())
            return record

        return self.client.transaction(attempt, key, value_from_callable=True)

    def pending_enqueue(self, older_than: float) -> list[str]:
        """Ids stored more than ``older_than`` seconds ago whose enqueue was never confirmed."""
        ceiling = time.time() - older_than
        return [i.decode() for i in self.client.zrangebyscore(self.outbox_key, "-inf", ceiling)]

    def mark_enqueued(self, job_id: str) -> None:
        self.client.zrem(self.outbox_key, job_id)

    def count_by_state(self) -> dict[JobState, int]:
        pipe = self.client.pipeline(transaction=False)
        for state in JobState:
            pipe.zcard(self.state_key(state))
        return dict(zip(JobState, pipe.execute()))

    # leases: which worker is running a job right now
    def acquire_lease(self, job_id: str, owner: str, ttl: float) -> float | None:
        """Take (or keep) the job's lease; None on success, else seconds until it expires."""
        remaining = self._acquire(keys=[self.lease_key(job_id)], args=[owner, int(ttl * 1000)])
        return None if remaining < 0 else remaining / 1000

    def renew_lease(self, job_id: str, owner: str, ttl: float) -> bool:
        """Extend our lease; False if it was lost (expired and taken by another worker)."""
        return bool(self._renew(keys=[self.lease_key(job_id)], args=[owner, int(ttl * 1000)]))

    def release_lease(self, job_id: str, owner: str) -> None:
        self._renew(keys=[self.lease_key(job_id)], args=[owner, 0])

    @staticmethod
    def _load(raw: bytes | None, job_id: str) -> JobRecord:
        if raw is None:
            raise JobNotFoundError(job_id)
        return JobRecord.model_validate_json(raw)


# Returns -1 when the caller holds the lease now, else the holder's remaining milliseconds.
_ACQUIRE_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return -1
end
return redis.call('PTTL', KEYS[1])
"""

# Renew (ttl > 0) or release (ttl == 0) only while the caller still holds the lease.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""
