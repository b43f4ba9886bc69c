"""``mds-convert``: a command-line client of the REST API, plus ``serve`` and ``worker``.

Client commands read ``--url``/``MDS_CONVERT_URL`` and ``--token``/``MDS_CONVERT_TOKEN``. Exit
status: 0 on success, 1 when a waited-for job did not succeed, 2 on an API or connection error.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL = {"succeeded", "failed", "cancelled"}


class ApiError(Exception):
    """The API answered with a problem body (or could not be reached)."""


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout)


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        with _client(args) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach {args.url}: {exc}") from exc
    body = response.json() if response.content else {}
    if response.status_code >= 400:
        errors = "".join(f"\n  {e['field']}: {e['message']}" for e in body.get("errors") or [])
        raise ApiError(
            f"{response.status_code} {body.get('code', '')}: {body.get('detail')}{errors}"
        )
    return body


def _print(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _columns(pairs: Sequence[str]) -> dict[str, str | None] | None:
    if not pairs:
        return None
    columns: dict[str, str | None] = {}
    for pair in pairs:
        name, _, encoding = pair.partition("=")
        columns[name] = encoding or None
    return columns


def _json_arg(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(f"{option} must be JSON: {exc}") from None


def _json_list(text: str, option: str) -> list[Any]:
    value = _json_arg(text, option)
    return value if isinstance(value, list) else [value]


def cmd_submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "source_table": args.source_table,
        "target": args.target,
        "compression": None if args.compression == "none" else args.compression,
        "hashes": args.hash or ["xxh64"],
        "size_limit": args.size_limit,
        "mode": args.mode,
    }
    if args.column:
        body["columns"] = _columns(args.column)
    if args.partitions:
        body["partitions"] = args.partitions
    if args.filter:
        body["filter"] = [c for text in args.filter for c in _json_list(text, "--filter")]
    if args.splits:
        body["splits"] = _json_arg(args.splits, "--splits")
    if args.callback_url:
        body["callback_url"] = args.callback_url
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    job = _call(args, "POST", "/v1/jobs", json=body, headers=headers)
    if args.wait:
        return _wait(args, job["id"])
    _print(job) if args.json else print(job["id"])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _print(_call(args, "GET", f"/v1/jobs/{args.job_id}"))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _call(args, "POST", f"/v1/jobs/{args.job_id}/cancel")
    print(f"{job['id']} {job['state']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    if args.principal:
        params["principal"] = args.principal
    page = _call(args, "GET", "/v1/jobs", params=params)
    if args.json:
        _print(page)
        return 0
    for job in page["jobs"]:
        request = job["request"]
        print(
            f"{job['id']}  {job['state']:<10}  {job['created_at']}  "
            f"{request['source_table']} -> {request['target']}"
        )
    if page.get("next_cursor"):
        print(f"(more: --cursor {page['next_cursor']})", file=sys.stderr)
    return 0


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    """``[#####-----] 3/8 partitions, 1,200 rows, 2.1 MB  running``."""
    p = job["progress"]
    total, done = p["partitions_total"], p["partitions_done"]
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"[{bar}] {done}/{total or '?'} partitions, {p['rows_written']:,} rows, "
        f"{p['bytes_written'] / 1e6:.1f} MB  {job['state']}"
    )


def _wait(args: argparse.Namespace, job_id: str) -> int:
    deadline = time.monotonic() + args.wait_timeout if args.wait_timeout else None
    tty = sys.stderr.isatty()
    while True:
        job = _call(args, "GET", f"/v1/jobs/{job_id}")
        line = progress_line(job)
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
        if job["state"] in FINAL:
            break
        if deadline is not None and time.monotonic() > deadline:
            print(f"\ntimed out waiting for {job_id}", file=sys.stderr)
            return 1
        time.sleep(args.interval)
    if tty:
        print(file=sys.stderr)
    _print(job)
    return 0 if job["state"] == "succeeded" else 1


def cmd_wait(args: argparse.Namespace) -> int:
    return _wait(args, args.job_id)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.settings import get_app_settings
    from worker.logging import configure_logging

    settings = get_app_settings()
    configure_logging(json_lines=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_config=None,
        access_log=False,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import make_celery
    from worker.settings import get_worker_settings

    settings = get_worker_settings()
    celery = make_celery(settings)
    argv = [
        "worker",
        f"--loglevel={args.loglevel}",
        f"--pool={args.pool}",
        f"--concurrency={args.concurrency or settings.concurrency}",
        f"--queues={settings.celery_queue}",
    ]
    celery.worker_main(argv)
    return 0


def cmd_worker_ping(args: argparse.Namespace) -> int:
    """Health check of the worker on this host (docker-compose healthcheck)."""
    from worker.celery_app import make_celery
    from worker.settings import get_worker_settings

    settings = get_worker_settings()
    celery = make_celery(settings)
    try:
        replies = celery.control.ping(destination=[f"celery@{socket.gethostname()}"], timeout=5)
    except Exception as exc:  # broker unreachable: unhealthy, said in one line
        print(f"worker-ping: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(replies))
    spark = _spark_states(settings)
    if spark is not None:  # one line per pool process: is its Spark session ready?
        print(json.dumps({"spark": spark}))
    if getattr(args, "require_spark", False):
        ready = bool(spark) and all(s.get("state") == "ready" for s in spark.values())
        return 0 if replies and ready else 1
    return 0 if replies else 1


def _spark_states(settings: Any) -> dict[str, Any] | None:
    from worker.readiness import read_states

    try:
        return read_states(settings.redis_url, settings.redis_prefix)
    except Exception as exc:  # the ping above answered; the states are informative
        print(f"worker-ping: spark state unavailable: {exc}", file=sys.stderr)
        return None


def cmd_mint_token(args: argparse.Namespace) -> int:
    """Print a new random token once, and the principals-file entry that holds its digest."""
    import secrets

    import yaml
    from pydantic import ValidationError

    from worker.access.principals import (
        AccessConfigError,
        PrincipalEntry,
        principal_from_entry,
        token_digest,
    )
    from worker.access.sources import CatalogDefaults

    token = secrets.token_urlsafe(32)
    entry = {
        "name": args.name,
        "tokens": [token_digest(token)],
        "scopes": args.scope or ["jobs:submit", "jobs:read", "jobs:cancel"],
        "sources": args.source or [],
        "source_paths": args.source_path or [],
        "targets": args.target or [],
    }
    if args.max_active_jobs is not None:
        entry["max_active_jobs"] = args.max_active_jobs
    try:  # refuse what the service would refuse to load
        principal_from_entry(PrincipalEntry.model_validate(entry), CatalogDefaults(), "entry")
    except (ValidationError, AccessConfigError) as exc:
        print(f"mint-token: {exc}", file=sys.stderr)
        return 2
    print(f"token (shown once; hand it to {args.name!r} through a secret store):", file=sys.stderr)
    print(token)
    print("add to the principals file (APP_PRINCIPALS_FILE) under 'principals:':", file=sys.stderr)
    print(yaml.safe_dump([entry], sort_keys=False, default_flow_style=None).rstrip())
    return 0


def cmd_hash_token(args: argparse.Namespace) -> int:
    """The digest of a token read from stdin (migrating APP_API_TOKENS to a principals file)."""
    from worker.access.principals import token_digest

    token = sys.stdin.readline().strip()
    if not token:
        print("hash-token: pass the token on stdin", file=sys.stderr)
        return 2
    print(token_digest(token))
    return 0


def cmd_housekeeping(args: argparse.Namespace) -> int:
    """Remove overwritten generations and dead run directories now (``--dry-run``: list them)."""
    from worker.housekeeping import housekeeping_round
    from worker.jobs import RedisJobStore
    from worker.settings import get_worker_settings

    settings = get_worker_settings()
    grace = settings.housekeeping_grace if args.grace is None else args.grace
    store = RedisJobStore.from_url(settings.redis_url, prefix=settings.redis_prefix)
    report = housekeeping_round(store, grace, dry_run=args.dry_run)
    if args.json:
        _print(report.as_dict())
    else:
        verb = "would remove" if args.dry_run else "removed"
        for url in report.removed:
            print(f"{verb} {url}")
        for line in report.skipped:
            print(f"skipped {line}")
        print(f"{verb} {len(report.removed)} paths, {report.files} files")
    return 0


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("MDS_CONVERT_URL", DEFAULT_URL))
    parser.add_argument("--token", default=os.environ.get("MDS_CONVERT_TOKEN"))
    parser.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds")
    parser.add_argument("--json", action="store_true", help="print full JSON")


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval (s)")
    parser.add_argument("--wait-timeout", type=float, default=None, help="give up after (s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mds-convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="submit a conversion job")
    _client_options(submit)
    _wait_options(submit)
    submit.add_argument("source_table")
    submit.add_argument("target")
    submit.add_argument("--compression", default="zstd", help="e.g. zstd:7, gz, none")
    submit.add_argument("--hash", action="append", help="repeatable; default xxh64")
    submit.add_argument("--size-limit", default="64mb")
    submit.add_argument("--column", action="append", metavar="NAME[=ENCODING]")
    submit.add_argument("--partitions", type=int)
    submit.add_argument("--mode", choices=["error", "overwrite", "append"], default="error")
    submit.add_argument(
        "--filter",
        action="append",
        metavar="JSON",
        help='a condition or a list, e.g. \'{"column": "day", "op": ">=", "value": "2024-01-01"}\'',
    )
    submit.add_argument(
        "--splits",
        metavar="JSON",
        help='e.g. \'{"by": "id", "parts": {"train": 0.9, "val": 0.1}}\'',
    )
    submit.add_argument("--callback-url", help="POSTed the job when it finishes")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="wait with a progress bar")
    submit.set_defaults(func=cmd_submit)

    for name, func, text in (
        ("status", cmd_status, "show a job"),
        ("wait", cmd_wait, "wait for a job, with a progress bar"),
        ("cancel", cmd_cancel, "cancel a job"),
    ):
        command = sub.add_parser(name, help=text)
        _client_options(command)
        if name == "wait":
            _wait_options(command)
        command.add_argument("job_id")
        command.set_defaults(func=func)

    listing = sub.add_parser("list", help="list jobs, newest first")
    _client_options(listing)
    listing.add_argument("--state")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--principal", help="admin only: that principal's jobs")
    listing.set_defaults(func=cmd_list)

    serve = sub.add_parser("serve", help="run the API (uvicorn)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--concurrency", type=int)
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=cmd_worker)

    mint = sub.add_parser(
        "mint-token", help="create a token and print the principals-file entry for it"
    )
    mint.add_argument("--name", required=True, help="the principal's name")
    mint.add_argument(
        "--scope",
        action="append",
        choices=["jobs:submit", "jobs:read", "jobs:cancel", "admin"],
        help="repeatable; default jobs:submit, jobs:read, jobs:cancel",
    )
    mint.add_argument("--source", action="append", help="catalog pattern, e.g. 'sales.*'")
    mint.add_argument("--source-path", action="append", help="root for path-based sources")
    mint.add_argument("--target", action="append", help="allowed target prefix")
    mint.add_argument("--max-active-jobs", type=int, help="override the global quota")
    mint.set_defaults(func=cmd_mint_token)

    hashing = sub.add_parser("hash-token", help="print the digest of a token read from stdin")
    hashing.set_defaults(func=cmd_hash_token)

    ping = sub.add_parser("worker-ping", help="exit 0 if this host's worker answers")
    ping.add_argument("--require-spark", action="store_true",
                      help="also fail unless every worker process's Spark session is ready")
    ping.set_defaults(func=cmd_worker_ping)

    house = sub.add_parser(
        "housekeeping", help="remove overwritten generations and dead run directories"
    )
    house.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    house.add_argument("--grace", type=float, help="seconds (default WORKER_HOUSEKEEPING_GRACE)")
    house.add_argument("--json", action="store_true", help="print the report as JSON")
    house.set_defaults(func=cmd_housekeeping)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
