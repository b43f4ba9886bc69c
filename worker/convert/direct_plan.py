"""Driver side of the direct read path: decide whether a DataFrame is a plain Parquet/ORC file
scan, and if so take Spark's own read plan (file listing, splits, partition values, schema).

The executors then read their splits with pyarrow (``worker.convert.direct_read``) instead of
Spark's columnar -> row -> Arrow round trip. The splits are Spark's ``FilePartition`` list of the
very plan ``mapInArrow`` would run, so rows arrive in the same order and the shards are the same
bytes. Anything that is not a bare scan (a view, a filter, a computed column, CSV or JSON, a
repartition, a null policy Spark applies) gets a reason and goes through ``mapInArrow``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from worker.convert.schema import ColumnPlan

# Plan nodes a bare scan may be wrapped in (whole-stage codegen, the column pruning projection).
_WRAPPERS = {"WholeStageCodegenExec", "ProjectExec", "ColumnarToRowExec", "InputAdapter"}
_FORMATS = {"ParquetFileFormat": "parquet", "OrcFileFormat": "orc"}
_SCHEMES = {"file"}  # pyarrow reads these without credentials or configuration of its own
_PRIMITIVES: dict[type[T.DataType], str] = {
    T.ByteType: "int8", T.ShortType: "int16", T.IntegerType: "int32", T.LongType: "int64",
    T.FloatType: "float32", T.DoubleType: "float64", T.BooleanType: "bool",
    T.StringType: "string", T.BinaryType: "binary", T.DateType: "date32",
    T.TimestampType: "timestamp_tz", T.TimestampNTZType: "timestamp_ntz",
}
_PARTITION_TYPES = (
    T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType,
    T.BooleanType, T.StringType, T.DateType,
)


@dataclass(frozen=True, slots=True)
class FileSplit:
    """One byte range of one file, with the values of the table's partition columns."""

    path: str  # a local path (scheme "file")
    start: int
    length: int
    file_size: int
    partition_values: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class DirectPlan:
    """What executors need to read the table themselves; ``splits[i]`` is Spark partition i."""

    file_format: str  # "parquet" or "orc"
    data_columns: tuple[tuple[str, str], ...]  # (name, canonical Arrow type) read from files
    partition_columns: tuple[tuple[str, str], ...]  # (name, canonical type) from the paths
    splits: tuple[tuple[FileSplit, ...], ...]


class NotDirect(Exception):
    """The DataFrame cannot take the direct path; the message says why (kept in the job)."""


def plan_direct_read(df: DataFrame, plans: list[ColumnPlan]) -> DirectPlan:
    """Spark's read plan of ``df`` (already projected to ``plans``) for pyarrow readers.

    Raises:
        NotDirect: ``df`` is not a bare Parquet/ORC scan of local files with supported types.
    """
    for plan in plans:
        if plan.source != "column":
            raise NotDirect(f"column {plan.name!r} ({plan.spark_type}) is converted by Spark")
    query = df._jdf.queryExecution()
    if _has_view(query.analyzed()):
        raise NotDirect("the source is a view")
    scan = _bare_scan(query.executedPlan())
    relation = scan.relation()
    file_format = _FORMATS.get(relation.fileFormat().getClass().getSimpleName())
    if file_format is None:
        raise NotDirect(f"{relation.fileFormat().toString()} files are read by Spark")
    if scan.dataFilters().size() or scan.partitionFilters().size():
        raise NotDirect("the scan filters rows")
    schema = T.StructType.fromJson(_json(scan.schema()))
    partition_names = {f.name for f in T.StructType.fromJson(_json(relation.partitionSchema()))}
    wanted = {plan.name for plan in plans}
    data, partitioned = [], []
    for field in schema.fields:
        if field.name not in wanted:
            continue
        if field.name in partition_names:
            partitioned.append((field.name, _partition_type(field)))
        else:
            data.append((field.name, canonical_spark_type(field.name, field.dataType)))
    missing = wanted - {f.name for f in schema.fields}
    if missing:
        raise NotDirect(f"column(s) {sorted(missing)} are not read from the files as they are")
    splits = _splits(scan, [name for name, _ in partitioned], file_format)
    return DirectPlan(file_format, tuple(data), tuple(partitioned), splits)


def canonical_spark_type(name: str, dtype: T.DataType) -> str:
    """The canonical Arrow type name a file column must have to hold ``dtype`` exactly."""
    primitive = _PRIMITIVES.get(type(dtype))
    if primitive is not None:
        return primitive
    if isinstance(dtype, T.CharType | T.VarcharType):
        return "string"
    if isinstance(dtype, T.DecimalType):
        return f"decimal({dtype.precision},{dtype.scale})"
    if isinstance(dtype, T.ArrayType):
        return f"list<{canonical_spark_type(name, dtype.elementType)}>"
    raise NotDirect(f"column {name!r} ({dtype.simpleString()}) is read by Spark")


def _partition_type(field: T.StructField) -> str:
    if not isinstance(field.dataType, _PARTITION_TYPES):
        raise NotDirect(
            f"partition column {field.name!r} ({field.dataType.simpleString()}) is read by Spark"
        )
    return _PRIMITIVES[type(field.dataType)]


def _has_view(node: Any) -> bool:
    if node.getClass().getSimpleName() == "View":
        return True
    children = node.children()
    return any(_has_view(children.apply(i)) for i in range(children.size()))


def _bare_scan(node: Any) -> Any:
    while True:
        name = node.getClass().getSimpleName()
        if name == "FileSourceScanExec":
            return node
        children = node.children()
        if name not in _WRAPPERS or children.size() != 1:
            raise NotDirect(f"the plan is not a bare file scan ({node.nodeName()})")
        if name == "ProjectExec" and not _only_references(node.projectList()):
            raise NotDirect("the plan computes columns")
        node = children.apply(0)


def _only_references(expressions: Any) -> bool:
    for i in range(expressions.size()):
        expr = expressions.apply(i)
        if expr.getClass().getSimpleName() == "Alias":
            if expr.child().getClass().getSimpleName() != "AttributeReference":
                return False
            if expr.name() != expr.child().name():
                return False
        elif expr.getClass().getSimpleName() != "AttributeReference":
            return False
    return True


def _json(jschema: Any) -> dict[str, Any]:
    import json

    return json.loads(jschema.json())


def _splits(scan: Any, partition_names: list[str], file_format: str) -> tuple:
    schema = scan.relation().partitionSchema()
    positions = {schema.apply(i).name(): i for i in range(schema.size())}
    types = {schema.apply(i).name(): schema.apply(i).dataType().typeName()
             for i in range(schema.size())}
    wanted = [(positions[name], types[name]) for name in partition_names]
    partitions = scan.inputRDD().filePartitions()
    result = []
    for i in range(partitions.size()):
        files = partitions.apply(i).files()
        result.append(tuple(_split(f, wanted, file_format) for f in files))
    return tuple(result)


def _split(jfile: Any, wanted: list[tuple[int, str]], file_format: str) -> FileSplit:
    uri = jfile.filePath().toPath().toUri()
    scheme = uri.getScheme() or "file"
    if scheme not in _SCHEMES:
        raise NotDirect(f"files on {scheme}:// are read by Spark")
    start, length, size = jfile.start(), jfile.length(), jfile.fileSize()
    if file_format == "orc" and (start != 0 or length != size):
        raise NotDirect("Spark splits an ORC file into stripe ranges")
    values = jfile.partitionValues()
    return FileSplit(uri.getPath(), start, length, size,
                     tuple(_partition_value(values, pos, kind) for pos, kind in wanted))


def _partition_value(row: Any, position: int, kind: str) -> object:
    if row.isNullAt(position):
        return None
    getters = {
        "byte": row.getByte, "short": row.getShort, "integer": row.getInt, "long": row.getLong,
        "float": row.getFloat, "double": row.getDouble, "boolean": row.getBoolean,
        "date": row.getInt,  # days since the epoch, as Spark holds it
    }
    if kind == "string":
        return row.getUTF8String(position).toString()
    return getters[kind](position)
