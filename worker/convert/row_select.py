"""Row filters and splits on a Spark DataFrame (see ``worker.convert.rowspec`` for the model).

Conditions become ``Column`` objects built with ``pyspark.sql.functions``: a column is referenced
by its exact name (backquoted, so dots and backquotes in a name are not parsed as structure) and
a value is always a literal. Nothing here produces SQL text.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Sequence
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from worker.convert.rowspec import Condition, Scalar, Splits
from worker.errors import PermanentConversionError

_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType)
_ORDERED_OPS = {"<", "<=", ">", ">=", "between"}


class InvalidFilterError(PermanentConversionError):
    """A filter or split names a missing column, or a value of the wrong type for it."""

    code = "invalid_filter"


def column_ref(df: DataFrame, name: str) -> tuple[Column, T.DataType]:
    """The top-level column called exactly ``name``, and its type."""
    for field in df.schema.fields:
        if field.name == name:
            return F.col("`" + name.replace("`", "``") + "`"), field.dataType
    columns = ", ".join(repr(f.name) for f in df.schema.fields)
    raise InvalidFilterError(f"the source has no column {name!r} (its columns: {columns})")


def _literal(value: Scalar, dtype: T.DataType, column: str) -> object:
    """``value`` as a Python value of the column's type, or InvalidFilterError."""
    kind = type(value).__name__
    wrong = InvalidFilterError(
        f"filter on {column!r}: a {kind} value {value!r} does not fit its type "
        f"{dtype.simpleString()}"
    )
    if isinstance(dtype, T.BooleanType):
        if not isinstance(value, bool):
            raise wrong
        return value
    if isinstance(value, bool):
        raise wrong
    if isinstance(dtype, _NUMERIC):
        if not isinstance(value, int | float):
            raise wrong
        if isinstance(dtype, T.ByteType | T.ShortType | T.IntegerType | T.LongType) and (
            isinstance(value, float) and not value.is_integer()
        ):
            raise wrong
        return value
    if isinstance(dtype, T.DecimalType):
        if not isinstance(value, int | float | str):
            raise wrong
        try:
            return decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise wrong from None
    if isinstance(dtype, T.StringType | T.VarcharType | T.CharType):
        if not isinstance(value, str):
            raise wrong
        return value
    if isinstance(dtype, T.DateType):
        try:
            return dt.date.fromisoformat(value) if isinstance(value, str) else _raise(wrong)
        except ValueError:
            raise wrong from None
    if isinstance(dtype, T.TimestampType | T.TimestampNTZType):
        try:
            parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else _raise(wrong)
        except ValueError:
            raise wrong from None
        if isinstance(dtype, T.TimestampType) and parsed.tzinfo is None:
            raise InvalidFilterError(
                f"filter on {column!r}: a timestamp value needs a UTC offset ({value!r})"
            )
        return parsed
    raise InvalidFilterError(
        f"filter on {column!r}: columns of type {dtype.simpleString()} cannot be filtered"
    )


def _raise(error: Exception) -> object:
    raise error


def condition_column(df: DataFrame, condition: Condition) -> Column:
    """The Spark ``Column`` of one condition (checked against the schema)."""
    ref, dtype = column_ref(df, condition.column)
    op = condition.op
    if op == "is_null":
        return ref.isNull()
    if op == "not_null":
        return ref.isNotNull()
    if op in _ORDERED_OPS and isinstance(dtype, T.BooleanType):
        raise InvalidFilterError(f"filter on {condition.column!r}: booleans are not ordered")
    values = [F.lit(_literal(v, dtype, condition.column)) for v in condition.values()]
    if op == "in":
        return ref.isin(*values)
    if op == "not_in":
        # As in Spark SQL, a null cell matches no comparison (not_in and != included): ask for
        # it with is_null.
        return ~ref.isin(*values)
    if op == "between":
        return ref.between(values[0], values[1])
    compare = {
        "=": ref.__eq__, "!=": ref.__ne__, "<": ref.__lt__, "<=": ref.__le__,
        ">": ref.__gt__, ">=": ref.__ge__,
    }[op]  # fmt: skip
    return compare(values[0])


def apply_filter(df: DataFrame, conditions: Sequence[Condition] | None) -> DataFrame:
    """``df`` restricted to the rows where every condition holds (Spark pushes the predicates
    down to Parquet and ORC scans).

    Raises:
        InvalidFilterError: a condition names a missing column or a value of the wrong type.
    """
    if not conditions:
        return df
    predicate = reduce(lambda a, b: a & b, (condition_column(df, c) for c in conditions))
    return df.filter(predicate)


def split_unit(df: DataFrame, splits: Splits) -> Column:
    """A number in [0, 1) per row, from ``xxhash64`` of the seed and the ``by`` columns."""
    refs = [column_ref(df, name)[0] for name in splits.columns()]
    hashed = F.xxhash64(F.lit(splits.seed), *refs)
    # The 53 high bits of the unsigned hash as a double in [0, 1): exact, so the bounds of
    # every part are the same on every run.
    high = F.shiftrightunsigned(hashed, 11)
    return high.cast("double") / F.lit(float(1 << 53))


def split_frames(df: DataFrame, splits: Splits) -> dict[str, DataFrame]:
    """One DataFrame per part; together they hold every row of ``df`` exactly once."""
    unit = split_unit(df, splits)
    frames = {}
    for name, low, high in splits.bounds():
        condition = unit >= F.lit(low)
        if high < 1.0:
            condition = condition & (unit < F.lit(high))
        frames[name] = df.filter(condition)
    return frames
