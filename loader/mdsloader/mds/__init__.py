"""The MDS v2 format: encodings, codecs, hashes, the index, shard files, writer and reader.

Everything here depends only on numpy, zstandard and xxhash; Pillow, Brotli, python-snappy,
pyarrow and boto3 are imported on first use by the features that need them.
"""

from __future__ import annotations

from mdsloader.mds.columnar import EncodedBatch, encode_batch
from mdsloader.mds.compression import Codec, compression_names, get_codec
from mdsloader.mds.encodings import (
    Encoding,
    encoding_names,
    get_encoding,
    is_unsafe,
    validate_encoding,
)
from mdsloader.mds.hashing import check_hash_names, hexdigest, supported_hashes
from mdsloader.mds.index import (
    INDEX_BASENAME,
    FileInfo,
    Index,
    ShardInfo,
    dump_index,
    merge_shards,
    parse_index,
    read_index,
)
from mdsloader.mds.reader import DatasetReader, SampleDecoder, ShardReader, open_local_dataset
from mdsloader.mds.record import ColumnPlan, RecordEncoder
from mdsloader.mds.writer import MDSWriter

__all__ = [
    "INDEX_BASENAME",
    "Codec",
    "ColumnPlan",
    "DatasetReader",
    "EncodedBatch",
    "Encoding",
    "FileInfo",
    "Index",
    "MDSWriter",
    "RecordEncoder",
    "SampleDecoder",
    "ShardInfo",
    "ShardReader",
    "check_hash_names",
    "compression_names",
    "dump_index",
    "encode_batch",
    "encoding_names",
    "get_codec",
    "get_encoding",
    "hexdigest",
    "is_unsafe",
    "merge_shards",
    "open_local_dataset",
    "parse_index",
    "read_index",
    "supported_hashes",
    "validate_encoding",
]
