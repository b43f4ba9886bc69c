"""Where this process sits in the training job: nodes, ranks and DataLoader workers.

The topology is read from the usual launcher environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``) and, inside a DataLoader worker, from the worker id and count that the caller
passes in (``dataset.py`` reads them from torch, so this module stays torch-free). No
``torch.distributed`` process group is needed, unlike the reference, which creates one only to run
barriers. Nodes are assumed homogeneous: ``nodes = WORLD_SIZE // LOCAL_WORLD_SIZE``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class World:
    """The global position of one worker (or of a rank, with one worker per rank).

    Attributes:
        num_nodes: Physical nodes in the job.
        ranks_per_node: Ranks (devices) per node.
        workers_per_rank: DataLoader workers per rank (1 when iterating in the main process).
        rank: Global rank of this process.
        worker_of_rank: This worker's index within its rank.
    """

    num_nodes: int = 1
    ranks_per_node: int = 1
    workers_per_rank: int = 1
    rank: int = 0
    worker_of_rank: int = 0

    @property
    def num_ranks(self) -> int:
        """Total ranks in the job."""
        return self.num_nodes * self.ranks_per_node

    @property
    def node(self) -> int:
        """The node this rank runs on."""
        return self.rank // self.ranks_per_node

    @property
    def rank_of_node(self) -> int:
        """This rank's index within its node."""
        return self.rank % self.ranks_per_node

    @property
    def worker(self) -> int:
        """Global worker index."""
        return self.rank * self.workers_per_rank + self.worker_of_rank

    def with_workers(self, worker_of_rank: int, workers_per_rank: int) -> World:
        """Return this world as seen from one DataLoader worker of this rank."""
        return replace(self, worker_of_rank=worker_of_rank, workers_per_rank=workers_per_rank)

    def replicate(self, replication: int) -> World:
        """Collapse groups of ``replication`` consecutive ranks into one (they see equal samples).

        Mirrors the reference: the rank count is divided by the factor; the nodes keep their
        ranks-per-node when that divides evenly, else the whole job is treated as one node.

        Raises:
            ValueError: The factor is not positive or does not divide the number of ranks.
        """
        if replication <= 0:
            raise ValueError(f"replication must be positive, got {replication}")
        if self.num_ranks % replication:
            raise ValueError(
                f"world size {self.num_ranks} is not divisible by replication {replication}"
            )
        num_ranks = self.num_ranks // replication
        # Keep ranks-per-node when it divides evenly, else treat the job as a single node.
        num_nodes = num_ranks // self.ranks_per_node if num_ranks % self.ranks_per_node == 0 else 1
        return World(
            num_nodes=num_nodes,
            ranks_per_node=num_ranks // num_nodes,
            workers_per_rank=self.workers_per_rank,
            rank=self.rank // replication,
            worker_of_rank=self.worker_of_rank,
        )


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from exc


def detect_world(env: Mapping[str, str] | None = None) -> World:
    """Read this rank's place in the job from launcher environment variables.

    Args:
        env: The environment to read (defaults to ``os.environ``).

    Returns:
        The rank-level world (one worker per rank).

    Raises:
        ValueError: The variables are inconsistent (e.g. ``WORLD_SIZE`` not a multiple of
            ``LOCAL_WORLD_SIZE``).
    """
    env = os.environ if env is None else env
    rank = _env_int(env, "RANK", 0)
    world_size = _env_int(env, "WORLD_SIZE", 1)
    local_world_size = _env_int(env, "LOCAL_WORLD_SIZE", 1)
    if world_size < 1 or local_world_size < 1 or world_size % local_world_size:
        raise ValueError(
            f"WORLD_SIZE={world_size} must be a positive multiple of "
            f"LOCAL_WORLD_SIZE={local_world_size}"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    return World(
        num_nodes=world_size // local_world_size,
        ranks_per_node=local_world_size,
        rank=rank,
    )


def local_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's rank within its node (``LOCAL_RANK``, default 0)."""
    return _env_int(os.environ if env is None else env, "LOCAL_RANK", 0)
