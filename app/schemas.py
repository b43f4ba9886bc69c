"""HTTP bodies: the job submission (validated field by field) and the job views."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from mdsloader.errors import MDSError
from mdsloader.mds.compression import get_codec
from mdsloader.mds.encodings import validate_encoding
from mdsloader.mds.hashing import check_hash_names
from worker.convert.identifiers import validate_table_identifier
from worker.convert.rowspec import RowFilter, Splits
from worker.errors import InvalidSourceError
from worker.jobs import JobRecord, JobRequest

MAX_SIZE_LIMIT = (1 << 32) - 1  # uint32 shard offsets: a shard must stay under 4 GiB
MAX_PARTITIONS = 100_000
_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?b)?\s*$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from an int or a size string (``"64mb"``; binary units, like the reference)."""
    if isinstance(value, bool):
        raise ValueError("size must be an integer number of bytes or a string like '64mb'")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        number, unit = match.groups()
        return int(float(number) * _UNITS[(unit or "b").lower()])
    raise ValueError(f"invalid size {value!r}: use bytes or a string like '64mb', '512kb', '1gb'")


SizeLimit = Annotated[
    int,
    BeforeValidator(parse_size),
    Field(gt=0, le=MAX_SIZE_LIMIT, description="bytes, or a size string such as '64mb'"),
]


class JobCreate(BaseModel):
    """The body of ``POST /v1/jobs``. Unknown fields are refused."""

    # strict: a JSON string is never turned into a number or a number into a string ("8" is
    # not a partition count); size_limit's own parser is the one deliberate exception.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "example": {
                "source_table": "sales.events",
                "target": "s3://datasets/events/v3",
                "compression": "zstd:7",
                "hashes": ["xxh64"],
                "size_limit": "64mb",
                "columns": {"text": "str", "emb": "ndarray:float32"},
                "partitions": 16,
                "mode": "error",
            }
        },
    )

    source_table: str = Field(min_length=1, max_length=1024)
    target: str = Field(min_length=1, max_length=2048)
    compression: str | None = "zstd"
    hashes: list[str] = Field(default_factory=lambda: ["xxh64"], max_length=16)
    size_limit: SizeLimit = 1 << 26
    columns: dict[str, str | None] | None = None
    partitions: int | None = Field(None, ge=1, le=MAX_PARTITIONS)
    mode: Literal["error", "overwrite", "append"] = "error"
    null_policy: Literal["error", "skip", "fill"] = "error"
    fill_values: dict[str, str | int | float | bool | list[Any] | dict[str, Any]] = Field(
        default_factory=dict, max_length=1024
    )
    callback_url: str | None = Field(
        None,
        min_length=1,
        max_length=2048,
        description="POSTed the job (HMAC-signed) when it reaches a final state",
    )
    splits: Splits | None = Field(
        None,
        description='one dataset per part under <target>/<part>/, e.g. {"by": "id", "seed": 7, '
        '"parts": {"train": 0.98, "val": 0.02}}: a stable hash of the by columns picks the part',
    )
    filter: RowFilter | None = Field(
        None,
        description="rows to keep: every {column, op, value} condition must hold; op is one of "
        "= != < <= > >= in not_in between is_null not_null (a null cell matches no comparison)",
    )

    @model_validator(mode="after")
    def _fill_needs_policy(self) -> JobCreate:
        if self.fill_values and self.null_policy != "fill":
            raise ValueError('fill_values is only used with null_policy "fill"')
        if self.null_policy == "fill" and not self.fill_values:
            raise ValueError('null_policy "fill" needs fill_values (column -> value)')
        return self

    @field_validator("source_table")
    @classmethod
    def _source(cls, value: str) -> str:
        try:
            return validate_table_identifier(value)
        except InvalidSourceError as exc:
            raise ValueError(exc.message) from None

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            get_codec(value)
        except MDSError as exc:  # CompressionError, or MissingExtraError for an absent codec
            raise ValueError(str(exc)) from None
        return value

    @field_validator("hashes")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        # The index needs them sorted and unique; order is not meaningful to callers.
        try:
            return check_hash_names(sorted(set(value)))
        except MDSError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: dict[str, str | None] | None) -> dict[str, str | None] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("columns, when given, must name at least one column")
        for name, encoding in value.items():
            if not name or len(name) > 256:
                raise ValueError(f"invalid column name {name!r}")
            if encoding is not None:
                try:
                    validate_encoding(encoding)
                except MDSError as exc:
                    raise ValueError(f"column {name!r}: {exc}") from None
        return value

    def to_request(self, target: str, source_table: str | None = None) -> JobRequest:
        """The normalised request, with ``target`` (and a path source) already resolved
        against the caller's grants."""
        data = self.model_dump()
        data["target"] = target
        if source_table is not None:
            data["source_table"] = source_table
        return JobRequest.model_validate(data)


class JobList(BaseModel):
    jobs: list[JobRecord]
    next_cursor: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
