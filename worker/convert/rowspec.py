"""Structured row filters and stable splits: what a job may ask of its rows, as data, never SQL.

A filter is a list of ``{"column", "op", "value"}`` conditions (all must hold). The API checks the
shape of each condition (the operator's arity, the kinds of values); the worker checks each
column and value against the table's schema before anything is written, and turns the
conditions into Spark ``Column`` objects, never into text for the SQL parser (Spark SQL
expressions can call JVM methods).

A split sends every row to exactly one named part, by a stable hash of its ``by`` columns and a
seed (``xxhash64``), so a row lands in the same part on every run and every append.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scalar = str | int | float | bool
Op = Literal["=", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "not_null", "between"]
MAX_IN_VALUES = 1000
MAX_CONDITIONS = 64
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Condition(BaseModel):
    """One condition of a row filter."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    column: str = Field(min_length=1, max_length=256)
    op: Op
    value: Scalar | list[Scalar] | None = None

    @model_validator(mode="after")
    def _arity(self) -> Condition:
        value, op = self.value, self.op
        if op in ("is_null", "not_null"):
            if value is not None:
                raise ValueError(f"op {op!r} takes no value")
        elif op in ("in", "not_in"):
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN_VALUES:
                raise ValueError(f"op {op!r} needs a list of 1 to {MAX_IN_VALUES} values")
        elif op == "between":
            if not isinstance(value, list) or len(value) != 2:
                raise ValueError("op 'between' needs a list [low, high]")
        elif value is None or isinstance(value, list):
            raise ValueError(f"op {op!r} needs one value (use is_null / not_null for nulls)")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError("values must be finite numbers")
        return self

    def values(self) -> list[Scalar]:
        if self.value is None:
            return []
        return list(self.value) if isinstance(self.value, list) else [self.value]


RowFilter = Annotated[list[Condition], Field(min_length=1, max_length=MAX_CONDITIONS)]


class Splits(BaseModel):
    """``{"by": "id", "seed": 7, "parts": {"train": 0.98, "val": 0.02}}``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    by: str | list[str]
    seed: int = Field(0, ge=0, lt=1 << 31)
    parts: dict[str, float | int] = Field(min_length=2, max_length=16)

    @model_validator(mode="after")
    def _check(self) -> Splits:
        columns = self.columns()
        if not columns or len(columns) > 16 or any(not c or len(c) > 256 for c in columns):
            raise ValueError("by: name 1 to 16 columns")
        if len(set(columns)) != len(columns):
            raise ValueError("by: a column is named twice")
        for name, share in self.parts.items():
            if not _SPLIT_NAME.match(name):
                raise ValueError(
                    f"parts: split name {name!r} must be 1-64 letters, digits, '_', '.', '-' "
                    "(it becomes a folder of the target)"
                )
            if isinstance(share, bool) or not 0 < share <= 1:
                raise ValueError(f"parts: the share of {name!r} must be in (0, 1]")
        if abs(sum(self.parts.values()) - 1) > 1e-9:
            raise ValueError("parts: the shares must add up to 1")
        return self

    def columns(self) -> list[str]:
        return [self.by] if isinstance(self.by, str) else list(self.by)

    def bounds(self) -> list[tuple[str, float, float]]:
        """``(name, low, high)`` per part over [0, 1): a row whose hash maps to ``u`` goes to the
        part with ``low <= u < high`` (the last part's ``high`` is 1, closing the range)."""
        result, low = [], 0.0
        items = list(self.parts.items())
        for i, (name, share) in enumerate(items):
            high = 1.0 if i == len(items) - 1 else low + float(share)
            result.append((name, low, high))
            low = high
        return result
