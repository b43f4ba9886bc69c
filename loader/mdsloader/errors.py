"""The loader's exception tree, drawn once.

Every error the loader raises derives from :class:`MDSError`. Third-party errors (botocore,
OSError, zstandard, ...) are mapped onto this tree in one place per subsystem, so callers never
need to import boto3 or a codec library to handle a failure::

    MDSError
    ├── FormatError (ValueError)           bad bytes on disk or in an index
    │   ├── IndexFormatError               malformed / unsupported index.json
    │   │   └── IndexDecodeError (json.JSONDecodeError)   not JSON at all (empty, truncated)
    │   ├── ShardFormatError               truncated or inconsistent shard file
    │   └── UnsupportedShardFormatError    json / csv / tsv / xsv shards
    ├── EncodingError (ValueError)         a value cannot be encoded or decoded
    │   └── UnknownEncodingError           an encoding name we do not know
    ├── UnsafeTypeError (ValueError)       pkl column without allow_unsafe_types=True
    ├── CompressionError (ValueError)      bad compression string or corrupt compressed data
    ├── MissingExtraError (ImportError)    an optional package (extra) is not installed
    ├── HashError (ValueError)             unknown hash algorithm or bad hash list
    ├── ChecksumError                      a file's digest does not match the index
    ├── ShardTooLargeError (ValueError)    a shard would reach 4 GiB (uint32 offsets)
    ├── EmptyDatasetError (ValueError, RuntimeError)   a stream whose shards hold no samples
    ├── InvalidArgumentError (TypeError, ValueError)   an unknown keyword argument
    └── StorageError (OSError)
        ├── ObjectNotFoundError (FileNotFoundError)
        │   └── IndexNotFoundError (RuntimeError)   no local index.json and no remote
        ├── AccessDeniedError (PermissionError)
        ├── StorageUnavailableError (ConnectionError)  retryable: throttling, 5xx, network
        └── TargetExistsError (FileExistsError)

Where the reference (mosaicml-streaming) raises a different built-in type for the same problem,
our class derives from that type too, so ``except`` clauses written for the reference still
catch it: ``IndexDecodeError`` is a ``json.JSONDecodeError``; ``EmptyDatasetError`` and
``IndexNotFoundError`` are instances of ``RuntimeError``; ``InvalidArgumentError`` is a
``ValueError`` (and a ``TypeError``, what Python raises for an unknown keyword).
"""

from __future__ import annotations

import json


class MDSError(Exception):
    """Base class of every error raised by the loader."""


class FormatError(MDSError, ValueError):
    """Bytes on disk or in an index do not follow the MDS v2 format."""


class IndexFormatError(FormatError):
    """An ``index.json`` is malformed or of an unsupported version."""


class ShardFormatError(FormatError):
    """A shard file is truncated or internally inconsistent."""


class UnsupportedShardFormatError(FormatError):
    """A shard uses one of the reference's non-MDS formats (json, csv, tsv, xsv)."""


class IndexDecodeError(IndexFormatError, json.JSONDecodeError):
    """An ``index.json`` that is not JSON at all (empty, truncated, garbage).

    Built like ``json.JSONDecodeError`` (``msg, doc, pos``), which the reference raises here.
    """


class EncodingError(MDSError, ValueError):
    """A value cannot be encoded (or decoded) with a column's encoding."""


class UnknownEncodingError(EncodingError):
    """An encoding name that the loader does not know."""


class UnsafeTypeError(MDSError, ValueError):
    """A dataset has a ``pkl`` column and ``allow_unsafe_types`` was not set."""


class CompressionError(MDSError, ValueError):
    """A compression string is invalid, or compressed data cannot be decoded."""


class MissingExtraError(MDSError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class HashError(MDSError, ValueError):
    """An unknown hash algorithm, or a hash list that is not sorted and unique."""


class ChecksumError(MDSError):
    """A file's digest does not match the digest recorded in the index."""


class ShardTooLargeError(MDSError, ValueError):
    """A shard would reach 4 GiB, which its uint32 offsets cannot address."""


class EmptyDatasetError(MDSError, ValueError, RuntimeError):
    """A stream's index lists no samples (the reference raises ``RuntimeError``)."""


class InvalidArgumentError(MDSError, TypeError, ValueError):
    """An unknown keyword argument (the reference's ``MDSWriter`` raises ``ValueError``)."""


class StorageError(MDSError, OSError):
    """A storage backend operation failed."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The object or file does not exist."""


class IndexNotFoundError(ObjectNotFoundError, RuntimeError):
    """A stream without a remote has no local ``index.json`` (the reference: ``RuntimeError``)."""


class AccessDeniedError(StorageError, PermissionError):
    """The credentials do not allow the operation."""


class StorageUnavailableError(StorageError, ConnectionError):
    """The backend could not be reached or kept failing (throttling, 5xx, network)."""


class TargetExistsError(StorageError, FileExistsError):
    """The output location already holds data and overwriting was not allowed."""
