"""The null policy: MDS has no null, so missing values are refused (``error``), dropped
(``skip``) or replaced (``fill``). Spark applies ``skip`` and ``fill``; the executors count what
is still missing while they encode, and the job fails on it without publishing anything.

"Missing" also covers what an ``ndarray`` cannot hold: an empty array, and (counted separately as
"null elements") a null inside a numeric array.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from worker.convert.model import NullPolicy
from worker.convert.schema import ColumnPlan, column_ref
from worker.errors import NullValuesError, PermanentConversionError

_INT_RANGES = {
    T.ByteType: 8, T.ShortType: 16, T.IntegerType: 32, T.LongType: 64,
}


@dataclass(frozen=True, slots=True)
class NullCounts:
    """Per column, the rows with a missing value or with null elements."""

    missing: dict[str, int] = field(default_factory=dict)
    null_elements: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{name!r}: {n} null or empty" for name, n in self.missing.items() if n]
        parts += [
            f"{name!r}: {n} with null elements" for name, n in self.null_elements.items() if n
        ]
        return ", ".join(parts)

    @property
    def has_nulls(self) -> bool:
        return any(self.missing.values()) or any(self.null_elements.values())


def count_nulls(df: DataFrame, plans: list[ColumnPlan]) -> NullCounts:
    """Count missing values of every column in one Spark aggregation (none if nothing can be
    missing, e.g. only non-nullable scalar columns)."""
    aggregates = []
    types = _types(df)
    for index, plan in enumerate(plans):
        missing, holes = _predicates(plan, types.get(plan.name))
        if missing is not None:
            aggregates.append(_count_where(missing).alias(f"m{index}"))
        if holes is not None:
            aggregates.append(_count_where(holes).alias(f"h{index}"))
    if not aggregates:
        return NullCounts()
    row = df.agg(*aggregates).first()
    values = row.asDict() if row is not None else {}
    missing_counts, hole_counts = {}, {}
    for index, plan in enumerate(plans):
        if values.get(f"m{index}"):
            missing_counts[plan.name] = int(values[f"m{index}"])
        if values.get(f"h{index}"):
            hole_counts[plan.name] = int(values[f"h{index}"])
    return NullCounts(missing_counts, hole_counts)


def apply_null_policy(
    df: DataFrame,
    plans: list[ColumnPlan],
    policy: NullPolicy,
    fill_values: Mapping[str, object] | None = None,
) -> DataFrame:
    """Return ``df`` with ``skip`` or ``fill`` applied in Spark (``error`` returns it unchanged).

    Nothing is counted here: the executors count what is still missing while they encode
    (``worker.convert.null_tally``), and :func:`null_error` turns those counts into the job's
    error, so the source is read once.

    Raises:
        PermanentConversionError: an unknown policy, or a fill value that does not fit
            (code ``invalid_fill_value``).
    """
    fill_values = dict(fill_values or {})
    if policy not in ("error", "skip", "fill"):
        raise PermanentConversionError(f"unknown null policy {policy!r}", code="invalid_request")
    if policy == "fill":
        _validate_fill_values(df.schema, plans, fill_values)
        return _fill(df, plans, fill_values)
    if policy == "skip":
        return df.filter(~_any_bad(plans, _types(df)))
    return df


def null_error(counts: NullCounts, policy: NullPolicy) -> NullValuesError:
    """The error of a conversion whose encoded rows still held ``counts`` under ``policy``."""
    if policy == "fill":
        if any(counts.null_elements.values()):
            return NullValuesError(
                f"null elements inside arrays cannot be filled ({counts.describe()}); "
                "use null_policy='skip'"
            )
        lacking = sorted(name for name, n in counts.missing.items() if n)
        return NullValuesError(
            f"null_policy='fill' needs a fill value for {lacking} ({counts.describe()})"
        )
    return NullValuesError(
        f"null values found ({counts.describe()}); set null_policy to 'skip' or 'fill'"
    )


def _types(df: DataFrame) -> dict[str, T.DataType]:
    return {field.name: field.dataType for field in df.schema.fields}


def _predicates(
    plan: ColumnPlan, dtype: T.DataType | None = None
) -> tuple[Column | None, Column | None]:
    """(missing, null elements) predicates for a column; None where nothing can be missing.

    ``dtype`` (the column's Spark type) lets the null-element test of numeric arrays take the
    fast path of :func:`_has_null_element`; without it the exact test is used.
    """
    col = column_ref(plan.name)
    if plan.source == "vector":
        return (col.isNull() if plan.nullable else None), None
    element = dtype.elementType if isinstance(dtype, T.ArrayType) else None
    if plan.kind == "ndarray":
        holes = _has_null_element(col, element) if plan.element_nulls else None
        return col.isNull() | (F.size(col) == 0), holes
    if plan.kind == "ndarray2d":
        inner = element.elementType if isinstance(element, T.ArrayType) else None
        holes = F.exists(
            col, lambda row: row.isNull() | (F.size(row) == 0) | _has_null_element(row, inner)
        )
        return col.isNull() | (F.size(col) == 0), holes
    return (col.isNull() if plan.nullable else None), None


def _has_null_element(array: Column, element: T.DataType | None = None) -> Column:
    """Whether a (non-null) array holds a null element; null for a null array.

    The exact test, ``size(array_compact(a)) < size(a)``, builds a new array per row (Spark runs
    ``array_compact`` as an interpreted lambda). ``array_contains(a, v)`` is compiled and
    allocates nothing, and by SQL's three-valued rule it is null exactly when ``a`` holds a null
    and no element equal to ``v``. Two different probe values therefore settle every row except
    one that holds both, and only such rows (rare with extreme probes) pay for the exact test.
    """
    exact = F.size(F.array_compact(array)) < F.size(array)
    probes = _probe_values(element)
    if probes is None:
        return exact
    first, second = (F.array_contains(array, F.lit(v).cast(element)) for v in probes)
    return (
        F.when(array.isNull(), F.lit(None).cast("boolean"))
        .when(first.isNull() | second.isNull(), True)
        .when(first & second, exact)
        .otherwise(False)
    )


def _probe_values(element: T.DataType | None) -> tuple[object, object] | None:
    """Two distinct values of ``element``, rarely both in one array; None: no fast path."""
    bits = _INT_RANGES.get(type(element))
    if bits is not None:
        return -(1 << bits - 1), (1 << bits - 1) - 1
    if isinstance(element, T.FloatType | T.DoubleType):
        return float("nan"), float("-inf")
    return None


def _count_where(predicate: Column) -> Column:
    return F.sum(F.when(predicate, 1).otherwise(0))


def _any_bad(plans: list[ColumnPlan], types: Mapping[str, T.DataType]) -> Column:
    predicates = []
    for plan in plans:
        missing, holes = _predicates(plan, types.get(plan.name))
        if missing is not None:
            predicates.append(F.coalesce(missing, F.lit(True)))
        if holes is not None:
            predicates.append(F.coalesce(holes, F.lit(True)))
    return reduce(lambda a, b: a | b, predicates, F.lit(False))


def _fill(df: DataFrame, plans: list[ColumnPlan], fill_values: dict[str, object]) -> DataFrame:
    """Replace the missing values of every column that has a fill value; what remains missing
    (columns without one, null elements) is counted by the executors and fails the job."""
    types = {f.name: f.dataType for f in df.schema.fields}
    for plan in plans:
        if plan.name not in fill_values:
            continue
        missing, _ = _predicates(plan)
        value = F.lit(fill_values[plan.name]).cast(types[plan.name])
        col = column_ref(plan.name)
        filled = F.when(missing, value).otherwise(col) if missing is not None else col
        df = df.withColumn(plan.name, filled)
    return df


def _validate_fill_values(
    schema: T.StructType, plans: list[ColumnPlan], fill_values: dict[str, object]
) -> None:
    by_name = {plan.name: plan for plan in plans}
    unknown = sorted(set(fill_values) - set(by_name))
    if unknown:
        raise PermanentConversionError(
            f"fill_values for unselected column(s) {unknown}", code="invalid_fill_value"
        )
    types = {f.name: f.dataType for f in schema.fields}
    for name, value in fill_values.items():
        reason = _fill_problem(types[name], by_name[name], value)
        if reason:
            spark_type = types[name].simpleString()
            raise PermanentConversionError(
                f"fill value {value!r} for column {name!r} ({spark_type}): {reason}",
                code="invalid_fill_value",
            )


def _fill_problem(dtype: T.DataType, plan: ColumnPlan, value: object) -> str | None:
    """Why ``value`` cannot replace a missing value of ``dtype``; None if it can."""
    if value is None:
        return "a fill value cannot be null"
    if plan.source == "vector" or plan.kind == "json":
        return "filling is not supported for this type; use null_policy='skip'"
    if isinstance(dtype, T.ArrayType):
        return _array_fill_problem(dtype, plan, value)
    return _scalar_fill_problem(dtype, value)


def _scalar_fill_problem(dtype: T.DataType, value: object) -> str | None:
    bits = _INT_RANGES.get(type(dtype))
    if bits is not None:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok and -(1 << bits - 1) <= value < 1 << bits - 1 else f"need an int{bits}"
    if isinstance(dtype, T.FloatType | T.DoubleType):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "need a number"
    checks: list[tuple[type[T.DataType], type | tuple[type, ...], str]] = [
        (T.BooleanType, bool, "need a bool"),
        (T.StringType, str, "need a string"),
        (T.BinaryType, bytes, "need bytes"),
        (T.DecimalType, (decimal.Decimal, int, str), "need a decimal"),
        (T.DateType, (dt.date, str), "need a date"),
        (T.TimestampType, (dt.datetime, str), "need a datetime"),
        (T.TimestampNTZType, (dt.datetime, str), "need a datetime"),
    ]
    for spark_type, python_types, reason in checks:
        if isinstance(dtype, spark_type):
            return None if isinstance(value, python_types) else reason
    return "filling is not supported for this type"


def _array_fill_problem(dtype: T.ArrayType, plan: ColumnPlan, value: object) -> str | None:
    rows = value if plan.kind == "ndarray2d" else [value]
    if not isinstance(value, list | tuple) or not value:
        return "need a non-empty list"
    if not all(isinstance(row, list | tuple) and row for row in rows):
        return "need a non-empty list of non-empty lists"
    if len({len(row) for row in rows}) != 1:
        return "inner lists must have the same length"
    flat = [x for row in rows for x in row]
    integral = plan.arrow_type.startswith(("int", "uint"))
    for x in flat:
        if isinstance(x, bool) or not isinstance(x, int | float):
            return "elements must be numbers"
        if integral and not isinstance(x, int):
            return "elements must be ints"
        if isinstance(x, float) and not math.isfinite(x) and integral:
            return "elements must be finite"
    if plan.shape is not None and math.prod(plan.shape) != len(flat):
        return f"need {math.prod(plan.shape)} elements for shape {plan.shape}"
    return None
