"""One owner per target: a Redis lease on the normalised target of a job.

A job takes its target's lease before it writes anything (and before it decides ``mode="error"``),
renews it while it runs (the watcher thread, with the job's own lease) and releases it at the end.
A job that finds its target owned stays ``queued`` with the reason in its record and tries again
shortly; so two jobs never write under one target at the same time, across workers and hosts.
Housekeeping takes the same lease while it cleans a target.

The lease is keyed by :func:`normalise_target`, so ``s3://b/x``, ``s3://b//x/`` and ``file:///d``
vs ``/d/`` are one target. Nested targets exclude each other too: a job on ``s3://b/x`` (whose
splits write ``s3://b/x/train``) and a job on ``s3://b/x/train`` never run at once. Every held
lease is also listed, with its expiry, in one hash (``<prefix>:targets:held``) that the take
script scans for a held ancestor or descendant (it holds one entry per running job).
The lease's value is the holder's name: the job id for a job (a redelivered job
takes its own lease back at once: only one worker can hold the job's lease, see
``worker.jobs.RedisJobStore.acquire_lease``), or a housekeeping run's name.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from urllib.parse import unquote, urlsplit

import redis

from worker.jobs import RedisJobStore


def normalise_target(target: str) -> str:
    """The canonical name of a dataset root: ``s3://bucket/prefix`` or ``file:///abs/path``.

    Scheme and bucket are lower-cased (bucket names are case-insensitive in DNS form and S3 refuses
    upper-case ones), repeated and trailing slashes are dropped, ``.``/``..`` segments resolved,
    and a local path or ``file://`` URI becomes an absolute, symlink-resolved ``file://`` URL.
    """
    text = target.strip()
    scheme = urlsplit(text).scheme.lower()
    if scheme == "s3":
        rest = text.split("://", 1)[1]
        bucket, _, prefix = rest.partition("/")
        clean = posixpath.normpath("/" + prefix).lstrip("/") if prefix.strip("/") else ""
        return f"s3://{bucket.lower()}" + (f"/{clean}" if clean else "")
    if scheme == "file":
        text = unquote(urlsplit(text).path)
    elif len(scheme) > 1:
        return text.rstrip("/")  # another store: at least trailing slashes do not matter
    return "file://" + os.path.realpath(os.path.abspath(text))


class TargetLeases:
    """Target leases in Redis (``<prefix>:target:<sha256 of the normalised target>``)."""

    def __init__(self, store: RedisJobStore) -> None:
        self.store = store
        self.client = store.client
        # Holder-checked take/renew/release, the same semantics as the job lease's scripts.
        self._acquire = self.client.register_script(_ACQUIRE_LUA)
        self._renew = self.client.register_script(_RENEW_LUA)

    def key(self, target: str) -> str:
        digest = hashlib.sha256(normalise_target(target).encode()).hexdigest()[:32]
        return f"{self.store.prefix}:target:{digest}"

    @property
    def held_key(self) -> str:
        return f"{self.store.prefix}:targets:held"

    def _keys(self, target: str) -> list[str]:
        return [self.key(target), self.held_key]

    def acquire(self, target: str, holder: str, ttl: float) -> str | None:
        """Take (or keep) the target's lease; None on success, else the name of the holder of
        this target or of a target nested in it or around it."""
        held = self._acquire(
            keys=self._keys(target),
            args=[holder, max(int(ttl * 1000), 1), normalise_target(target)],
        )
        return None if held is None else (held.decode() if isinstance(held, bytes) else str(held))

    def renew(self, target: str, holder: str, ttl: float) -> bool:
        """Extend our lease; False if it was lost (expired and taken by someone else)."""
        return bool(
            self._renew(
                keys=self._keys(target),
                args=[holder, max(int(ttl * 1000), 1), normalise_target(target)],
            )
        )

    def release(self, target: str, holder: str) -> None:
        """Give the lease up, only if we still hold it."""
        self._renew(keys=self._keys(target), args=[holder, 0, normalise_target(target)])

    def holder(self, target: str) -> str | None:
        raw = self.client.get(self.key(target))
        return None if raw is None else raw.decode()

    def release_quietly(self, target: str, holder: str) -> None:
        """Release, but never mask the outcome of a job: an unreleased lease expires on its own."""
        try:
            self.release(target, holder)
        except redis.RedisError:
            pass


# KEYS: the target's lease, the hash of held leases (normalised target -> "<expiry ms> <holder>").
# ARGV: holder, ttl ms, normalised target. Returns nil when the caller holds the lease now, else
# the name of a live holder of this target or of one nested in it or around it.
_ACQUIRE_LUA = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local mine = ARGV[3]
local function nested(a, b)
  return a == b or string.sub(b, 1, #a + 1) == a .. '/' or string.sub(a, 1, #b + 1) == b .. '/'
end
local holder = redis.call('GET', KEYS[1])
if holder ~= false and holder ~= ARGV[1] then return holder end
local held = redis.call('HGETALL', KEYS[2])
for i = 1, #held, 2 do
  local target, value = held[i], held[i + 1]
  local space = string.find(value, ' ', 1, true)
  local expiry, owner = tonumber(string.sub(value, 1, space - 1)), string.sub(value, space + 1)
  if expiry <= now_ms then
    redis.call('HDEL', KEYS[2], target)
  elseif owner ~= ARGV[1] and nested(target, mine) then
    return owner
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], mine, tostring(now_ms + tonumber(ARGV[2])) .. ' ' .. ARGV[1])
return nil
"""

# Renew (ttl > 0) or release (ttl == 0) only while the caller still holds the lease.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('HSET', KEYS[2], ARGV[3], tostring(now_ms + tonumber(ARGV[2])) .. ' ' .. ARGV[1])
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('HDEL', KEYS[2], ARGV[3])
return redis.call('DEL', KEYS[1])
"""
