"""The reference's sample order for any topology, computed in one process.

The reference builds each epoch's 5-D (nodes, ranks per node, workers per rank, batches, batch)
array in ``generate_work`` and every worker takes its slice; calling the same function with a
hand-made ``World`` gives the exact ids of any worker of any topology without spawning the
reference's ranks (which would need a torch.distributed process group for its barriers).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def reference_dataset(local: str, *, streams: list[dict] | None = None, **kwargs: Any) -> Any:
    """A single-process reference StreamingDataset over local data (remote=None)."""
    from streaming import Stream, StreamingDataset

    if streams:
        ds = StreamingDataset(streams=[Stream(**s) for s in streams], **kwargs)
    else:
        ds = StreamingDataset(local=local, **kwargs)
    ds._given_block = kwargs.get("shuffle_block_size")
    return ds


def reference_work(
    ds: Any,
    *,
    nodes: int,
    ranks_per_node: int,
    workers: int,
    epoch: int,
    sample_in_epoch: int = 0,
    num_canonical_nodes: int | None = None,
    initial_physical_nodes: int | None = None,
    replication: int | None = None,
) -> np.ndarray:
    """The reference's full epoch array (5-D, -1 padded) for a topology."""
    from streaming.base.batching import generate_work
    from streaming.base.world import World

    world = World(nodes, ranks_per_node, workers, 0)
    if replication:
        world = world.replicate(replication)
    ncn = num_canonical_nodes or (
        64 * world.num_nodes if ds.shuffle_algo in ("py1s", "py2s") else world.num_nodes
    )
    ds.num_canonical_nodes = ncn
    ds.shuffle_block_size = ds._given_block or max(4_000_000 // ncn, 1 << 18)
    ds.initial_physical_nodes = initial_physical_nodes
    return generate_work(ds.batching_method, ds, world, epoch, sample_in_epoch)


def worker_ids(work: np.ndarray, rank: int, worker: int) -> list[int]:
    """One worker's yielded ids from a 5-D epoch array (padding dropped)."""
    ranks_per_node = work.shape[1]
    ids = work[rank // ranks_per_node, rank % ranks_per_node, worker].ravel()
    return ids[ids != -1].tolist()


def rank_ids(work: np.ndarray, rank: int) -> list[int]:
    """One rank's yielded ids through a DataLoader (batches taken round robin from workers)."""
    ranks_per_node = work.shape[1]
    per_worker = work[rank // ranks_per_node, rank % ranks_per_node]  # (workers, batches, batch)
    ids = per_worker.transpose(1, 0, 2).ravel()
    return ids[ids != -1].tolist()
