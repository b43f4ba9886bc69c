"""Deterministic sample order: stream resampling, shuffles and partitioning (pure numpy).

Every function here returns exactly what mosaicml-streaming's function of the same role returns for
the same inputs (mds-format.md 3.2-3.7), so that our loader and the reference yield the same samples
in the same order per rank and their resume states are interchangeable.
"""

from __future__ import annotations

from mdsloader.ordering.epoch import (
    BATCHING_METHODS,
    OrderSettings,
    Topology,
    default_num_canonical_nodes,
    default_shuffle_block_size,
    worker_sample_ids,
)
from mdsloader.ordering.partition import PARTITION_ALGOS, get_partitions, worker_partition
from mdsloader.ordering.sampling import (
    SAMPLING_METHODS,
    StreamSpec,
    resample_streams,
    resolve_stream_choose,
)
from mdsloader.ordering.shuffle import SHUFFLE_ALGOS, get_shuffle

__all__ = [
    "BATCHING_METHODS",
    "PARTITION_ALGOS",
    "SAMPLING_METHODS",
    "SHUFFLE_ALGOS",
    "OrderSettings",
    "StreamSpec",
    "Topology",
    "default_num_canonical_nodes",
    "default_shuffle_block_size",
    "get_partitions",
    "get_shuffle",
    "resample_streams",
    "resolve_stream_choose",
    "worker_partition",
    "worker_sample_ids",
]
