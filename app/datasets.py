"""A succeeded job's published dataset: its summary from ``index.json`` and a preview of its
first samples, decoded by the loader; no FastAPI.

The dataset is read where the job published it, with the API process's own storage credentials.
An index that no longer lists any shard of the job's run directory (``<target>/<job id>/``) was
replaced by a later publication to the same target; one that is gone was removed: both answer
``410 dataset_gone``, since the job's result no longer describes what lies there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from itertools import pairwise
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from app.errors import AppError
from app.preview import json_safe
from mdsloader.errors import (
    AccessDeniedError,
    MDSError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from mdsloader.mds.compression import get_codec
from mdsloader.mds.index import INDEX_BASENAME, Index, ShardInfo, parse_index
from mdsloader.mds.record import SampleDecoder
from mdsloader.mds.shard import read_offsets
from mdsloader.storage import Storage, open_storage
from worker.jobs import JobRecord, JobState

log = logging.getLogger("app.datasets")
MAX_PREVIEW = 100
SHARDS_LISTED = 50


class DatasetNotReady(AppError):
    status_code, code, title = 409, "dataset_not_ready", "Dataset not published"


class DatasetGone(AppError):
    status_code, code, title = 410, "dataset_gone", "Dataset no longer there"


class DatasetUnreadable(AppError):
    status_code, code, title = 502, "dataset_unreadable", "Dataset unreadable"


class StorageUnavailable(AppError):
    status_code, code, title = 503, "storage_unavailable", "Dataset storage unavailable"


DATASET_ERRORS = (DatasetNotReady, DatasetGone, DatasetUnreadable, StorageUnavailable)


class DatasetColumn(BaseModel):
    name: str
    encoding: str
    size: int | None = Field(description="fixed encoded width in bytes; null when variable")


class DatasetShard(BaseModel):
    basename: str
    samples: int
    raw_bytes: int
    stored_bytes: int = Field(description="the file as stored (compressed when compression is on)")
    hashes: dict[str, str] = Field(description="digests of the stored file")


class DatasetPreview(BaseModel):
    requested: int
    samples: list[dict[str, Any]] = Field(
        description="the first samples in dataset order; bytes, arrays, images and long values "
        "are shortened to an object naming their type (and dtype and shape)"
    )


class DatasetView(BaseModel):
    """What ``GET /v1/jobs/{id}/dataset`` answers."""

    job_id: str
    location: str = Field(description="the dataset root (the job's target)")
    index_url: str
    samples: int
    shards: int
    raw_bytes: int
    stored_bytes: int
    compression: list[str | None] = Field(description="distinct compression of the shards")
    hashes: list[str] = Field(description="hash algorithms recorded for the shard files")
    size_limit: int | None
    columns: list[DatasetColumn]
    shard_list: list[DatasetShard] = Field(description=f"the first {SHARDS_LISTED} shards")
    preview: DatasetPreview | None = None


def describe_dataset(record: JobRecord, preview: int = 0) -> DatasetView:
    """The summary of ``record``'s published dataset, with its first ``preview`` samples.

    Raises:
        DatasetNotReady: the job has not succeeded (nothing of it is published).
        DatasetGone: the index was removed, or replaced by another job's publication.
        DatasetUnreadable: the index or a shard is corrupt, or access to it is denied.
        StorageUnavailable: the storage did not answer.
    """
    if record.state is not JobState.SUCCEEDED or record.result is None:
        raise DatasetNotReady(
            f"job {record.id} is {record.state}: only a succeeded job has a dataset"
        )
    with _storage_errors(record):
        storage = open_storage(record.request.target, retries=1, timeout=20)
        index = _load_index(storage, record)
        view = _summary(record, index)
        if preview:
            view.preview = DatasetPreview(
                requested=preview, samples=read_samples(storage, index, preview)
            )
    return view


@contextmanager
def _storage_errors(record: JobRecord) -> Iterator[None]:
    """Maps the loader's storage and format errors to API errors naming the job."""
    try:
        yield
    except AppError:
        raise
    except (MDSError, ValueError) as exc:
        log.warning("dataset.read_failed", extra={"job_id": record.id, "error": repr(exc)})
        raise _api_error(record, exc) from None


def _api_error(record: JobRecord, exc: Exception) -> AppError:
    where = f"the dataset of job {record.id} at {record.request.target}"
    if isinstance(exc, StorageUnavailableError):
        return StorageUnavailable(f"{where} could not be reached: {exc}")
    if isinstance(exc, AccessDeniedError):
        return DatasetUnreadable(f"the service may not read {where}: {exc}")
    if isinstance(exc, ObjectNotFoundError):
        return DatasetGone(f"a file of {where} is missing: {exc}")
    kind = "storage error" if isinstance(exc, StorageError) else "corrupt"
    return DatasetUnreadable(f"{where} cannot be read ({kind}): {exc}")


def _load_index(storage: Storage, record: JobRecord) -> Index:
    try:
        data = storage.read_bytes(INDEX_BASENAME)
    except ObjectNotFoundError:
        raise DatasetGone(
            f"job {record.id} published {record.result.index_url if record.result else ''}, "
            "but that index.json is no longer there (it was removed)"
        ) from None
    index = parse_index(data, source=storage.child_url(INDEX_BASENAME))
    run_dir = f"{record.id}/"
    if not any(shard.file.basename.startswith(run_dir) for shard in index.shards):
        raise DatasetGone(
            f"the index at {storage.child_url(INDEX_BASENAME)} no longer lists job "
            f"{record.id}'s shards: another job has published over it since"
        )
    return index


def _summary(record: JobRecord, index: Index) -> DatasetView:
    first = index.shards[0]
    hashes = sorted({algo for shard in index.shards for algo in shard.hashes})
    compressions = list(dict.fromkeys(shard.compression for shard in index.shards))
    return DatasetView(
        job_id=record.id,
        location=record.request.target,
        index_url=record.result.index_url if record.result else "",
        samples=index.num_samples,
        shards=len(index.shards),
        raw_bytes=sum(shard.raw_data.bytes for shard in index.shards),
        stored_bytes=sum(shard.file.bytes for shard in index.shards),
        compression=compressions,
        hashes=hashes,
        size_limit=first.size_limit,
        columns=[
            DatasetColumn(name=name, encoding=encoding, size=size)
            for name, encoding, size in zip(
                first.column_names, first.column_encodings, first.column_sizes
            )
        ],
        shard_list=[
            DatasetShard(
                basename=shard.file.basename,
                samples=shard.samples,
                raw_bytes=shard.raw_data.bytes,
                stored_bytes=shard.file.bytes,
                hashes=dict(shard.file.hashes),
            )
            for shard in index.shards[:SHARDS_LISTED]
        ],
    )


def read_samples(storage: Storage, index: Index, count: int) -> list[dict[str, Any]]:
    """The first ``count`` samples of the dataset, in index order, as JSON-safe dicts.

    Only the shards holding them are read; of an uncompressed shard only the header and the
    records' byte range. ``pkl`` columns are handed over as their bytes, never unpickled.
    """
    samples: list[dict[str, Any]] = []
    for shard in index.shards:
        if len(samples) >= count:
            break
        wanted = min(shard.samples, count - len(samples))
        if wanted == 0:
            continue
        encodings = shard.column_encodings
        decoder = SampleDecoder(_without_pickle(shard))
        for record in _records(storage, shard, wanted):
            decoded = decoder.decode(record)
            samples.append(
                {name: json_safe(decoded[name], enc)
                 for name, enc in zip(shard.column_names, encodings)}
            )
    return samples


def _without_pickle(shard: ShardInfo) -> ShardInfo:
    # ``bytes`` decodes a value verbatim: the pickle is shown by length, never loaded.
    safe = tuple("bytes" if enc == "pkl" else enc for enc in shard.column_encodings)
    return replace(shard, column_encodings=safe)


def _records(storage: Storage, shard: ShardInfo, wanted: int) -> list[bytes]:
    """The byte records of the first ``wanted`` samples of one shard."""
    name = shard.file.basename
    if shard.zip_data is None:
        head = storage.read_range(name, 0, 4 * (wanted + 2))
        if len(head) < 4 * (wanted + 2):
            raise DatasetUnreadable(f"shard {name} is truncated")
        offsets = np.frombuffer(head, "<u4", wanted + 1, 4).astype(np.int64)
        if offsets[0] < 4 * (shard.samples + 2) or np.any(np.diff(offsets) < 0):
            raise DatasetUnreadable(f"shard {name} has corrupt sample offsets")
        base = int(offsets[0])
        ends = offsets.tolist()
        body = storage.read_range(name, base, ends[-1])
        if len(body) < ends[-1] - base:
            raise DatasetUnreadable(f"shard {name} is truncated")
        return [body[a - base : b - base] for a, b in pairwise(ends)]
    codec = get_codec(shard.compression)
    if codec is None:
        raise DatasetUnreadable(f"shard {name} has zip_data but no compression")
    raw = codec.decompress(storage.read_bytes(name))
    offsets = read_offsets(raw, shard.samples, where=name)[: wanted + 1].tolist()
    return [raw[a:b] for a, b in pairwise(offsets)]
