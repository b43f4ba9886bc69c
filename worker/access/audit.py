"""The audit trail: one structured log line per submission, cancellation and refusal.

Lines go to the ``audit`` logger with the event as the message and the fields as ``extra``, so
the JSON log formatter (``worker.logging``) writes them as one object a log pipeline can index:
``{"logger": "audit", "event": "job.refused", "principal": "sales-etl", "reason": ..., ...}``.
Tokens never appear: a principal is named, never its credential.
"""

from __future__ import annotations

import logging

log = logging.getLogger("audit")


def audit(event: str, *, principal: str | None, **fields: object) -> None:
    """Log one audit event (``job.submitted``, ``job.cancel_requested``, ``job.refused``,
    ``request.refused``, ``job.access_denied``) with who did it and the relevant fields."""
    log.info(event, extra={"audit": True, "principal": principal or "-", **fields})
