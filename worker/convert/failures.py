"""Map whatever a conversion raised (Spark, py4j, storage, executor tags) onto ``worker.errors``."""

from __future__ import annotations

import json
import re

from mdsloader import errors as loader_errors
from worker import errors
from worker.convert.partitions import ERROR_TAG
from worker.errors import ConversionError, PermanentConversionError, TransientConversionError

_TAGGED = re.compile(re.escape(ERROR_TAG) + r"(\{.*?\})" + re.escape(ERROR_TAG), re.DOTALL)
# Spark failures that a new attempt can get past: lost executors, shuffle fetches, connections.
_TRANSIENT_MARKERS = (
    "ExecutorLostFailure", "FetchFailed", "Connection refused", "Connection reset",
    "SparkContext was shut down", "SparkContext has been shutdown",
)


def to_conversion_error(exc: BaseException) -> ConversionError:
    """The ``worker.errors`` exception that describes ``exc`` (``exc`` itself when it is one)."""
    if isinstance(exc, ConversionError):
        return exc
    tagged = _from_executor(str(exc))
    if tagged is not None:
        return tagged
    if isinstance(exc, loader_errors.AccessDeniedError):
        return PermanentConversionError(f"access denied: {exc}", code="access_denied")
    if isinstance(exc, loader_errors.ObjectNotFoundError):
        return PermanentConversionError(f"target not found: {exc}", code="target_not_found")
    if isinstance(exc, loader_errors.StorageError | ConnectionError | TimeoutError):
        return TransientConversionError(f"storage or network unavailable: {exc}")
    if _is_py4j_network_error(exc) or any(m in str(exc) for m in _TRANSIENT_MARKERS):
        return TransientConversionError(f"Spark failed transiently: {_summary(exc)}")
    if _is_analysis_error(exc):
        return PermanentConversionError(f"Spark analysis error: {_summary(exc)}")
    return PermanentConversionError(f"conversion failed: {_summary(exc)}")


def _from_executor(text: str) -> ConversionError | None:
    """Rebuild the last tagged executor error in ``text`` (Spark repeats the cause in its
    message; the last one is the final attempt's)."""
    found = _TAGGED.findall(text)
    if not found:
        return None
    try:
        payload = json.loads(found[-1])
    except json.JSONDecodeError:
        return None
    cls = getattr(errors, str(payload.get("cls")), None)
    if not (isinstance(cls, type) and issubclass(cls, ConversionError)):
        cls = PermanentConversionError
    return cls(str(payload.get("message")), code=payload.get("code"))


def _is_py4j_network_error(exc: BaseException) -> bool:
    try:
        from py4j.protocol import Py4JNetworkError
    except ImportError:  # pragma: no cover - py4j ships with pyspark
        return False
    return isinstance(exc, Py4JNetworkError)


def _is_analysis_error(exc: BaseException) -> bool:
    from pyspark.errors import AnalysisException

    return isinstance(exc, AnalysisException)


def _summary(exc: BaseException) -> str:
    """One line naming the real cause: Spark's error class and message, or the Java exception
    at the root of a py4j error (whose own first line is only "An error occurred while calling
    o500.load.")."""
    java = _java_cause(exc)
    if java is not None:
        return java[:500]
    condition = getattr(exc, "getCondition", lambda: None)()
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    if condition and condition not in first:
        first = f"[{condition}] {first}"
    return first[:500]


def _java_cause(exc: BaseException) -> str | None:
    """``ClassName: message`` of the deepest cause of a py4j ``Py4JJavaError``, else None."""
    try:
        from py4j.protocol import Py4JJavaError
    except ImportError:  # pragma: no cover - py4j ships with pyspark
        return None
    if not isinstance(exc, Py4JJavaError):
        return None
    try:
        top = throwable = exc.java_exception
        for _ in range(32):  # the cause chain, bounded against cycles
            cause = throwable.getCause()
            if cause is None:
                break
            throwable = cause
        root = str(throwable.toString()).strip().splitlines()[0]
        condition = _java_condition(top)
        return f"[{condition}] {root}" if condition and condition not in root else root
    except Exception:  # the JVM is gone: fall back to the text py4j printed
        text = str(exc)
        causes = [line.strip()[2:] for line in text.splitlines() if line.startswith(": ")]
        return causes[-1] if causes else None


def _java_condition(throwable: object) -> str | None:
    """Spark's error class of a JVM exception (a ``SparkThrowable``), else None."""
    for name in ("getCondition", "getErrorClass"):
        try:
            value = getattr(throwable, name)()
        except Exception:  # not a SparkThrowable, or an older Spark
            continue
        if value:
            return str(value)
    return None
