"""Moved: target parsing and the allow-list live in ``worker.access.targets`` (the worker re-checks
targets too, and the worker never imports ``app``). This name stays for existing imports."""

from worker.access.targets import (  # noqa: F401
    Target,
    TargetError,
    TargetNotAllowedError,
    parse_allow_list,
    parse_target,
    resolve_target,
)
