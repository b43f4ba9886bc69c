"""The bridge between a dataset's catalog and :mod:`mdsloader.ordering` (the sample order).

It turns the dataset's streams and options into the ordering package's inputs once, and then
answers "which global sample ids does this worker yield in this epoch" for any topology.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdsloader.ordering import sampling

if TYPE_CHECKING:
    from mdsloader.catalog import Catalog
    from mdsloader.options import OrderOptions
    from mdsloader.ordering.streamed import ReplaySource, WorkerPlan
    from mdsloader.stream import Stream
    from mdsloader.world import World


def stream_specs(catalog: Catalog, streams: list[Stream]) -> list[sampling.StreamSpec]:
    """One ordering ``StreamSpec`` per stream (its shard sizes and weight)."""
    specs = []
    begin = 0
    for stream_id, stream in enumerate(streams):
        count = int(catalog.shards_per_stream[stream_id])
        specs.append(
            sampling.StreamSpec(
                num_samples=int(catalog.samples_per_stream[stream_id]),
                samples_per_shard=catalog.samples_per_shard[begin : begin + count],
                proportion=stream.proportion,
                repeat=stream.repeat,
                choose=stream.choose,
            )
        )
        begin += count
    return specs


class EpochPlanner:
    """Computes per-worker sample ids for a fixed catalog, stream weighting and options.

    Args:
        catalog: The dataset's shards.
        streams: The dataset's streams (their weights).
        options: The validated order options.
    """

    def __init__(self, catalog: Catalog, streams: list[Stream], options: OrderOptions) -> None:
        self._options = options
        self._specs = stream_specs(catalog, streams)
        self.choose_per_stream = sampling.resolve_stream_choose(
            self._specs, options.epoch_size, options.shuffle_seed
        )
        self.epoch_size = int(sum(self.choose_per_stream))

    def default_ncn(self, num_nodes: int) -> int:
        """The reference's default canonical nodes for a physical node count."""
        from mdsloader.ordering import epoch

        return int(epoch.default_num_canonical_nodes(self._options.shuffle_algo, num_nodes))

    @staticmethod
    def default_block_size(num_canonical_nodes: int) -> int:
        """The reference's default shuffle block size for a canonical node count."""
        from mdsloader.ordering import epoch

        return int(epoch.default_shuffle_block_size(num_canonical_nodes))

    def next_replay_inputs(self, *, epoch: int, num_canonical_nodes: int, shuffle_seed: int,
                           shuffle_block_size: int, batch_size: int) -> tuple | None:
        """Arguments of ``epoch``'s ``py1e`` replay (for preparing it early), or None."""
        from mdsloader.ordering.streamed import py1e_replay_inputs

        return py1e_replay_inputs(self._specs, self.choose_per_stream,
                                  self._settings(num_canonical_nodes, shuffle_seed,
                                                 shuffle_block_size, batch_size), epoch)

    def _settings(self, num_canonical_nodes: int, shuffle_seed: int, shuffle_block_size: int,
                  batch_size: int):
        from mdsloader.ordering import epoch as ordering

        options = self._options
        return ordering.OrderSettings(
            num_canonical_nodes=num_canonical_nodes,
            batch_size=batch_size,
            shuffle=options.shuffle,
            shuffle_algo=options.shuffle_algo,
            shuffle_seed=shuffle_seed,
            shuffle_block_size=shuffle_block_size,
            partition_algo=options.partition_algo,
            sampling_method=options.sampling_method,
            sampling_granularity=options.sampling_granularity,
            batching_method=options.batching_method,
        )

    def worker_plan(
        self,
        world: World,
        *,
        epoch: int,
        sample_in_epoch: int,
        num_canonical_nodes: int,
        shuffle_seed: int,
        shuffle_block_size: int,
        batch_size: int,
        initial_physical_nodes: int | None,
        replay_source: ReplaySource | None = None,
    ) -> WorkerPlan:
        """One worker's streamed plan for an epoch (its ids come chunk by chunk).

        ``replay_source`` makes the epoch's ``py1e`` replay (a node's plan cache passes its own).
        """
        from mdsloader.ordering import epoch as ordering
        from mdsloader.ordering.streamed import plan_worker

        settings = self._settings(num_canonical_nodes, shuffle_seed, shuffle_block_size,
                                  batch_size)
        topology = ordering.Topology(
            num_nodes=world.num_nodes,
            ranks_per_node=world.ranks_per_node,
            workers_per_rank=world.workers_per_rank,
            node=world.node,
            rank_of_node=world.rank_of_node,
            worker_of_rank=world.worker_of_rank,
        )
        return plan_worker(
            self._specs,
            self.choose_per_stream,
            settings,
            topology,
            epoch=epoch,
            sample_in_epoch=sample_in_epoch,
            initial_physical_nodes=initial_physical_nodes,
            replay_source=replay_source,
        )
