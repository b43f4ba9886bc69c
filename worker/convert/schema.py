"""Spark type -> MDS encoding: the inference table of mds-format.md 2.7 and override validation.

The result is a list of :class:`ColumnPlan`: plain, picklable values that tell the Spark projection
(``projection``) and the executor-side Arrow conversion (``worker.convert.arrow``) what to do with
each column. Everything here runs on the driver before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mdsloader.errors import UnknownEncodingError
from mdsloader.mds.encodings import validate_encoding
from worker.errors import ColumnOverrideError, UnsupportedTypeError

Kind = Literal["scalar", "ndarray", "ndarray2d", "json"]
Source = Literal["column", "to_json", "vector"]

# Numeric Spark types -> numpy/MDS dtype names.
_NUMERIC: dict[type[T.DataType], str] = {
    T.ByteType: "int8",
    T.ShortType: "int16",
    T.IntegerType: "int32",
    T.LongType: "int64",
    T.FloatType: "float32",
    T.DoubleType: "float64",
}
# Lossless widenings a user may ask for: source dtype -> dtypes that hold every value exactly.
_WIDENINGS: dict[str, tuple[str, ...]] = {
    "uint8": ("uint8", "int16", "int32", "int64"),
    "int8": ("int8", "int16", "int32", "int64", "float32", "float64"),
    "int16": ("int16", "int32", "int64", "float32", "float64"),
    "int32": ("int32", "int64", "float64"),
    "int64": ("int64",),
    "float32": ("float32", "float64"),
    "float64": ("float64",),
}
_BINARY_ENCODINGS = ("bytes", "jpeg", "png", "pil", "pkl")
_REJECTED = (
    T.NullType,
    T.DayTimeIntervalType,
    T.YearMonthIntervalType,
    T.CalendarIntervalType,
    T.VariantType,
)


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """How one column is projected in Spark, converted in Arrow and encoded in MDS.

    Attributes:
        name: Column name (also the MDS column name).
        spark_type: Spark's ``simpleString`` of the source type, for messages.
        encoding: The MDS encoding written to the index.
        kind: ``scalar`` (one Arrow value per sample), ``ndarray`` (a numeric list),
            ``ndarray2d`` (a list of equal-length numeric lists) or ``json`` (a JSON string).
        arrow_type: The Arrow type of a scalar, or the element dtype of an array.
        shape: The static shape of a fixed ``ndarray:<dtype>:<shape>`` encoding.
        source: ``column`` as is, ``to_json`` (Spark renders JSON) or ``vector`` (ML vector to
            ``array<double>`` in Spark).
        nullable: Whether Spark says the column may hold nulls.
        element_nulls: Whether a numeric array may hold null elements.
    """

    name: str
    spark_type: str
    encoding: str
    kind: Kind
    arrow_type: str
    shape: tuple[int, ...] | None = None
    source: Source = "column"
    nullable: bool = True
    element_nulls: bool = False

    @property
    def is_array(self) -> bool:
        return self.kind in ("ndarray", "ndarray2d")


def plan_columns(
    schema: T.StructType, columns: Mapping[str, str | None] | None = None
) -> list[ColumnPlan]:
    """Choose each selected column's encoding, validating overrides against the Spark types.

    Args:
        schema: The DataFrame's schema.
        columns: Selected columns and their encoding overrides (``None`` infers); ``None``
            selects every column with inferred encodings.

    Raises:
        ColumnOverrideError: An unknown column, or an override that cannot hold the type.
        UnsupportedTypeError: A selected column's type has no MDS encoding.
    """
    fields = {field.name: field for field in schema.fields}
    wanted = dict.fromkeys(fields) if columns is None else dict(columns)
    unknown = sorted(set(wanted) - set(fields))
    if unknown:
        raise ColumnOverrideError(
            f"unknown column(s) {unknown}; the source has {sorted(fields)}", code="unknown_column"
        )
    if not wanted:
        raise ColumnOverrideError("no columns selected", code="unknown_column")
    return [_plan(fields[name], override) for name, override in wanted.items()]


def projection(plans: list[ColumnPlan]) -> list[Column]:
    """The Spark expressions that feed ``mapInArrow``, one per plan, aliased to the column name."""
    return [_expression(plan).alias(plan.name) for plan in plans]


def column_ref(name: str) -> Column:
    """A reference to column ``name`` that is safe for any name (dots, spaces, backquotes)."""
    return F.col("`" + name.replace("`", "``") + "`")


def mds_columns(plans: list[ColumnPlan]) -> dict[str, str]:
    """The ``columns`` mapping handed to ``MDSWriter``."""
    return {plan.name: plan.encoding for plan in plans}


def _expression(plan: ColumnPlan) -> Column:
    ref = column_ref(plan.name)
    if plan.source == "to_json":
        return F.to_json(ref)
    if plan.source == "vector":
        from pyspark.ml.functions import vector_to_array

        return vector_to_array(ref, dtype="float64")
    return ref


def _plan(field: T.StructField, override: str | None) -> ColumnPlan:
    inferred = _infer(field)
    if override is None or override == inferred.encoding:
        return inferred
    return _apply_override(field, inferred, override)


def _infer(field: T.StructField) -> ColumnPlan:
    dtype = field.dataType
    base = {"name": field.name, "spark_type": dtype.simpleString(), "nullable": field.nullable}
    numeric = _numeric(dtype)
    if numeric is not None:
        return ColumnPlan(encoding=numeric, kind="scalar", arrow_type=numeric, **base)
    scalar = _scalar_encoding(dtype)
    if scalar is not None:
        encoding, arrow_type = scalar
        return ColumnPlan(encoding=encoding, kind="scalar", arrow_type=arrow_type, **base)
    if _is_vector(dtype):
        return ColumnPlan(
            encoding="ndarray:float64", kind="ndarray", arrow_type="float64", source="vector",
            **base,
        )
    if isinstance(dtype, T.ArrayType):
        array = _array_plan(dtype, base)
        if array is not None:
            return array
    _check_json_compatible(field.name, dtype, dtype)
    # Spark renders the JSON text; as bytes it passes through the writer unchanged.
    return ColumnPlan(encoding="json", kind="json", arrow_type="binary", source="to_json", **base)


def _numeric(dtype: T.DataType) -> str | None:
    return _NUMERIC.get(type(dtype))


def _scalar_encoding(dtype: T.DataType) -> tuple[str, str] | None:
    """(encoding, Arrow type) of the non-numeric scalar types."""
    if isinstance(dtype, T.BooleanType):
        return "uint8", "uint8"
    if isinstance(dtype, T.DateType):
        return "int32", "int32"
    if isinstance(dtype, T.TimestampType | T.TimestampNTZType):
        return "int64", "int64"
    if isinstance(dtype, T.DecimalType):
        return "str_decimal", "binary"  # the decimal's text, passed through as bytes
    if isinstance(dtype, T.StringType | T.CharType | T.VarcharType):
        return "str", "string"
    if isinstance(dtype, T.BinaryType):
        return "bytes", "binary"
    return None


def _array_plan(dtype: T.ArrayType, base: dict[str, object]) -> ColumnPlan | None:
    element = _numeric(dtype.elementType)
    if element is not None:
        return ColumnPlan(
            encoding=f"ndarray:{element}", kind="ndarray", arrow_type=element,
            element_nulls=dtype.containsNull, **base,
        )
    inner = dtype.elementType
    if isinstance(inner, T.ArrayType) and _numeric(inner.elementType) is not None:
        element = _numeric(inner.elementType)
        return ColumnPlan(
            encoding=f"ndarray:{element}", kind="ndarray2d", arrow_type=str(element),
            element_nulls=dtype.containsNull or inner.containsNull, **base,
        )
    return None


def _is_vector(dtype: T.DataType) -> bool:
    return isinstance(dtype, T.UserDefinedType) and type(dtype).__name__ == "VectorUDT"


def _check_json_compatible(column: str, top: T.DataType, dtype: T.DataType) -> None:
    """Maps, structs and arrays become JSON unless they hold something JSON cannot carry."""
    if isinstance(dtype, (*_REJECTED, T.UserDefinedType)):
        raise UnsupportedTypeError(
            f"column {column!r} has type {top.simpleString()}, which MDS cannot store"
            + ("" if dtype is top else f" (it contains {dtype.simpleString()})")
        )
    children: list[T.DataType] = []
    if isinstance(dtype, T.ArrayType):
        children = [dtype.elementType]
    elif isinstance(dtype, T.MapType):
        children = [dtype.keyType, dtype.valueType]
    elif isinstance(dtype, T.StructType):
        children = [field.dataType for field in dtype.fields]
    elif _numeric(dtype) is None and _scalar_encoding(dtype) is None:
        raise UnsupportedTypeError(
            f"column {column!r} has type {top.simpleString()}, which MDS cannot store"
        )
    for child in children:
        _check_json_compatible(column, top, child)


def _apply_override(field: T.StructField, inferred: ColumnPlan, encoding: str) -> ColumnPlan:
    try:
        validate_encoding(encoding, column=field.name)
    except UnknownEncodingError as exc:
        raise ColumnOverrideError(str(exc)) from None
    plan = _override_plan(field.dataType, inferred, encoding)
    if plan is None:
        raise ColumnOverrideError(
            f"column {field.name!r} of type {inferred.spark_type} cannot be written as "
            f"{encoding!r} (default {inferred.encoding!r})"
        )
    return plan


def _override_plan(dtype: T.DataType, inferred: ColumnPlan, encoding: str) -> ColumnPlan | None:
    if inferred.kind == "json":
        return None  # json is the only encoding that holds maps, structs and other arrays
    if encoding == "json" and inferred.is_array and inferred.source == "column":
        return replace(inferred, encoding="json", kind="json", arrow_type="binary",
                       source="to_json", element_nulls=False)
    if inferred.kind == "scalar":
        arrow_type = _scalar_override(dtype, inferred, encoding)
        return None if arrow_type is None else replace(
            inferred, encoding=encoding, arrow_type=arrow_type
        )
    return _array_override(inferred, encoding)


def _scalar_override(dtype: T.DataType, inferred: ColumnPlan, encoding: str) -> str | None:
    if isinstance(dtype, T.BinaryType):
        return "binary" if encoding in _BINARY_ENCODINGS else None
    if isinstance(dtype, T.DateType | T.DecimalType) and encoding == "str":
        return "string"
    if isinstance(dtype, T.DecimalType | T.StringType | T.CharType | T.VarcharType):
        return None
    if isinstance(dtype, T.DateType):
        return "int64" if encoding == "int64" else None
    source = inferred.arrow_type  # booleans count as uint8, timestamps as int64
    return encoding if encoding in _WIDENINGS.get(source, ()) else None


def _array_override(inferred: ColumnPlan, encoding: str) -> ColumnPlan | None:
    parts = encoding.split(":")
    if parts[0] != "ndarray" or len(parts) < 2 or not parts[1]:
        return None
    if parts[1] not in _WIDENINGS.get(inferred.arrow_type, ()):
        return None
    shape = tuple(int(dim) for dim in parts[2].split(",")) if len(parts) == 3 else None
    if inferred.kind == "ndarray2d" and shape is not None and len(shape) != 2:
        return None
    return replace(inferred, encoding=encoding, arrow_type=parts[1], shape=shape)
