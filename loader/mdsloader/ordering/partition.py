"""Partition an epoch's sample positions over nodes, ranks and workers (``orig`` and ``relaxed``).

The reference builds the whole ``(nodes, ranks, workers, batches, batch_size)`` array with a chain
of reshapes and transposes. Every one of those steps is an index map, so here they are composed into
one closed-form function from (node, rank, worker, batch, slot) to a sample position. A worker can
then compute its own slice in O(its samples) time and memory, and the full array is the same
function evaluated on the full grid. The composition, step by step (mds-format.md 3.4):

1. Canonical rows: row ``c`` holds ``[c*N//C, (c+1)*N//C)``, padded to ``ceil(N/C)`` by repeating
   its last id, and, when there are fewer canonical nodes than physical nodes, padded further so
   that the row length divides by ``P // C``. Tiny datasets (``N < C``) tile ``range(N)`` instead.
2. Global order: position ``t`` is row ``t % C``, column ``t // C``; the first ``drop_first``
   positions (rounded down to a multiple of ``P``) are resumption and are skipped.
3. Node ``p`` takes every ``P``-th remaining position starting at ``p``; the node's sequence is
   padded by repeating samples until it divides by the ranks per node.
4. Rank ``q`` takes every ``R``-th sample of its node's sequence starting at ``q``; the rank's
   sequence is padded with ``-1`` to a multiple of ``workers * batch_size``.
5. Consecutive ``batch_size`` chunks of a rank go to its workers round-robin.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

PARTITION_ALGOS = ("orig", "relaxed")


@dataclass(frozen=True, slots=True)
class OrigPlan:
    """The scalar facts of one ``orig`` partition, from which any element can be computed.

    Attributes:
        num_samples: Epoch size ``N``.
        ncn: Canonical nodes ``C``.
        nodes: Physical nodes ``P``.
        ranks: Ranks per node ``R``.
        workers: Workers per rank ``W``.
        batch_size: Per-device batch size ``B``.
        drop: Resumption offset, already rounded down to a multiple of ``P``.
        row_len: ``ceil(N / C)``, the canonical row length before node padding.
        padding: Extra columns appended to every canonical row when ``C < P``.
        node_ratio: ``P // C`` when ``C < P``, else 0.
        tiled: Whether the rows tile ``range(N)`` (the tiny-dataset branch).
        per_node: Samples of each node before rank padding.
        underflow: Samples appended to each node so that it divides by ``R``.
        per_rank: Samples of each rank before the ``-1`` padding.
        batches: Batches per worker.
    """

    num_samples: int
    ncn: int
    nodes: int
    ranks: int
    workers: int
    batch_size: int
    drop: int
    row_len: int
    padding: int
    node_ratio: int
    tiled: bool
    per_node: int
    underflow: int
    per_rank: int
    batches: int

    @property
    def padded_row_len(self) -> int:
        """Row length including the node padding columns."""
        return self.row_len + self.padding


def _positive(name: str, value: int) -> None:
    if int(value) < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def validate_partition_args(
    algo: str,
    num_samples: int,
    num_canonical_nodes: int,
    num_physical_nodes: int,
    ranks_per_node: int,
    workers_per_rank: int,
    batch_size: int,
    drop_first: int,
) -> None:
    """Check the arguments shared by :func:`get_partitions` and :func:`worker_partition`.

    Raises:
        ValueError: On an unknown algorithm, a non-positive size, a negative ``drop_first``, or a
            ``drop_first`` beyond the (device-padded) epoch, as the reference does.
    """
    if algo not in PARTITION_ALGOS:
        raise ValueError(f"`partition_algo` must be one of {PARTITION_ALGOS}, got {algo!r}")
    for name, value in (
        ("num_samples", num_samples),
        ("num_canonical_nodes", num_canonical_nodes),
        ("num_physical_nodes", num_physical_nodes),
        ("ranks_per_node", ranks_per_node),
        ("workers_per_rank", workers_per_rank),
        ("batch_size", batch_size),
    ):
        _positive(name, value)
    if drop_first < 0:
        raise ValueError(f"`drop_first` must be non-negative, got {drop_first}")
    world = ranks_per_node * num_physical_nodes
    # The reference pads the epoch up to the next multiple of the world size, and a whole extra
    # world's worth when it already divides; resuming past that is an error.
    if num_samples + world - num_samples % world < drop_first:
        raise ValueError(
            f"Resuming further into the dataset ({drop_first}) than it has samples "
            f"({num_samples}): `drop_first` (sample_in_epoch) is too large"
        )


def plan_orig(
    num_samples: int,
    num_canonical_nodes: int,
    num_physical_nodes: int,
    ranks_per_node: int,
    workers_per_rank: int,
    batch_size: int,
    drop_first: int = 0,
) -> OrigPlan:
    """Compute the scalar plan of an ``orig`` partition.

    Raises:
        ValueError: If neither of canonical and physical node counts divides the other, or if the
            node padding cannot be filled (a dataset far smaller than the node count).
    """
    n, c, p = int(num_samples), int(num_canonical_nodes), int(num_physical_nodes)
    r, w, b = int(ranks_per_node), int(workers_per_rank), int(batch_size)
    if max(c, p) % min(c, p):
        raise ValueError(
            f"Either `num_canonical_nodes` ({c}) or `num_physical_nodes` ({p}) must be evenly "
            "divisible by the other with the 'orig' partition algorithm, otherwise striping "
            "slices of shards over nodes may lead to each node downloading all shards"
        )
    drop = int(drop_first) - int(drop_first) % p
    row_len = -(-n // c)
    node_ratio = p // c if c < p else 0
    padding = (-row_len) % node_ratio if node_ratio else 0
    tiled = not (n > c or (n == c and c >= p))
    if tiled:
        warnings.warn(
            f"Trying to partition {n} samples over {c} canonical nodes. This will result in many "
            "samples being repeated. Check the dataset size, or decrease num_canonical_nodes.",
            stacklevel=3,
        )
    elif padding and row_len - padding - node_ratio + 1 < 0:
        # The reference copies the padding from a slice that starts before the row; numpy then
        # fails to broadcast it. Refuse the same inputs with a clearer message.
        raise ValueError(
            f"Cannot pad {n} samples over {c} canonical nodes for {p} physical nodes: the dataset "
            "is too small for this many nodes"
        )
    per_node = max(c * (row_len + padding) - drop, 0) // p
    underflow = (-per_node) % r
    per_rank = (per_node + underflow) // r
    batches = -(-per_rank // (w * b))
    return OrigPlan(
        num_samples=n, ncn=c, nodes=p, ranks=r, workers=w, batch_size=b, drop=drop,
        row_len=row_len, padding=padding, node_ratio=node_ratio, tiled=tiled, per_node=per_node,
        underflow=underflow, per_rank=per_rank, batches=batches,
    )  # fmt: skip


def _canonical_ids(plan: OrigPlan, t: np.ndarray) -> np.ndarray:
    """Sample id at global (interleaved) position ``t`` of the canonical rows."""
    c, n = plan.ncn, plan.num_samples
    row, col = (None, t) if c == 1 else np.divmod(t, c)[::-1]
    if plan.tiled:
        return (col if row is None else row * plan.padded_row_len + col) % n
    # Per-row tables are tiny (one entry per canonical node); gathering from them is cheaper
    # than recomputing the row bounds for every element.
    starts = np.arange(c + 1, dtype=np.int64) * n // c
    ids = col + starts[row] if row is not None else col.copy()
    if n % c:
        # Rows one shorter than ``row_len`` repeat their last id in the final column.
        is_short = np.diff(starts) < plan.row_len
        ids -= is_short[row] & (col == plan.row_len - 1)
    if plan.padding:
        # Padding column k repeats column ``row_len - padding - node_ratio + 1 + k``.
        shift = plan.padding + plan.node_ratio - 1
        ids = np.where(col >= plan.row_len, ids - shift, ids)
    return ids


def rank_ids(plan: OrigPlan, node: np.ndarray | int, rank: np.ndarray | int,
             index: np.ndarray) -> np.ndarray:
    """Sample id at ``index`` (< ``plan.per_rank``) of the given rank's un-padded sequence."""
    per_node, under, r = plan.per_node, plan.underflow, plan.ranks
    m = rank + r * index
    if under:
        extra = m - per_node
        # With fewer samples than ranks, the reference tiles the node's sequence instead.
        enough = r + under - 1 <= per_node
        repeat = per_node - r - under + 1 + extra if enough else extra % per_node
        m = np.where(extra >= 0, repeat, m)
    return _canonical_ids(plan, plan.drop + node + plan.nodes * m)


def orig_ids(plan: OrigPlan, node: np.ndarray | int, rank: np.ndarray | int,
             worker: np.ndarray | int, batch: np.ndarray | int,
             slot: np.ndarray | int) -> np.ndarray:
    """Element ``[node, rank, worker, batch, slot]`` of the ``orig`` partition (-1 for padding)."""
    index = (batch * plan.workers + worker) * plan.batch_size + slot
    index = np.asarray(index, np.int64)
    valid = index < plan.per_rank
    ids = rank_ids(plan, node, rank, np.where(valid, index, 0))
    return np.where(valid, ids, -1)


def _relaxed_ids(plan0: OrigPlan, nodes: int, batch_size: int, node, rank, worker, batch, slot):
    """Element of a ``relaxed`` re-cut of ``plan0``'s traversal order for a new node count."""
    r, w = plan0.ranks, plan0.workers
    flat = (((batch * w + worker) * nodes + node) * r + rank) * batch_size + slot
    flat, slot0 = np.divmod(flat, plan0.batch_size)
    flat, rank0 = np.divmod(flat, r)
    flat, node0 = np.divmod(flat, plan0.nodes)
    batch0, worker0 = np.divmod(flat, w)
    return orig_ids(plan0, node0, rank0, worker0, batch0, slot0)


@dataclass(frozen=True, slots=True)
class Partition:
    """A resolved partition: either a plain ``orig`` plan, or ``relaxed`` over an initial plan.

    Attributes:
        plan: The ``orig`` plan that produces the samples.
        nodes: Physical nodes of the output layout.
        batch_size: Per-device batch size of the output layout.
        recut: Whether the output re-cuts ``plan``'s traversal order (``relaxed`` resumption on a
            node count that does not divide or is not divided by the canonical node count).
    """

    plan: OrigPlan
    nodes: int
    batch_size: int
    recut: bool

    @property
    def batches(self) -> int:
        """Batches per worker in the output layout."""
        return self.plan.batches

    def ids(self, node, rank, worker, batch, slot) -> np.ndarray:
        """Element ``[node, rank, worker, batch, slot]`` of the partition (-1 for padding)."""
        if self.recut:
            return _relaxed_ids(self.plan, self.nodes, self.batch_size, node, rank, worker, batch,
                                slot)
        return orig_ids(self.plan, node, rank, worker, batch, slot)


def resolve_partition(
    algo: str,
    num_samples: int,
    num_canonical_nodes: int,
    num_physical_nodes: int,
    ranks_per_node: int,
    workers_per_rank: int,
    batch_size: int = 1,
    drop_first: int = 0,
    initial_physical_nodes: int | None = None,
) -> Partition:
    """Validate the arguments and resolve the partition (see :func:`get_partitions`)."""
    validate_partition_args(algo, num_samples, num_canonical_nodes, num_physical_nodes,
                            ranks_per_node, workers_per_rank, batch_size, drop_first)
    c, p, r = num_canonical_nodes, num_physical_nodes, ranks_per_node
    divisible = max(c, p) % min(c, p) == 0
    if algo == "orig" or initial_physical_nodes is None or divisible:
        plan = plan_orig(num_samples, c, p, r, workers_per_rank, batch_size, drop_first)
        return Partition(plan, p, batch_size, recut=False)
    _positive("initial_physical_nodes", initial_physical_nodes)
    global_batch = p * r * batch_size
    initial_devices = initial_physical_nodes * r
    if global_batch % initial_devices:
        raise ValueError(
            f"A global batch size of {global_batch} is not evenly divisible by the initial total "
            f"number of devices of {initial_devices}. With the 'relaxed' partition algorithm the "
            "global batch size must not change when resuming (check `batch_size` and "
            "`initial_physical_nodes`)"
        )
    plan = plan_orig(num_samples, c, initial_physical_nodes, r, workers_per_rank,
                     global_batch // initial_devices, drop_first)
    return Partition(plan, p, batch_size, recut=True)


def get_partitions(
    algo: str,
    num_samples: int,
    num_canonical_nodes: int,
    num_physical_nodes: int,
    ranks_per_node: int,
    workers_per_rank: int,
    batch_size: int = 1,
    drop_first: int = 0,
    initial_physical_nodes: int | None = None,
) -> np.ndarray:
    """Partition an epoch of sample positions over nodes, ranks and workers.

    Same result as the reference's ``streaming.base.partition.get_partitions``.

    Args:
        algo: ``'orig'`` or ``'relaxed'``.
        num_samples: Epoch size (after resampling).
        num_canonical_nodes: Canonical node count, which fixes the global order.
        num_physical_nodes: Physical node count.
        ranks_per_node: Ranks (devices) per node.
        workers_per_rank: DataLoader workers per rank (at least 1).
        batch_size: Per-device batch size.
        drop_first: Samples of this epoch already consumed (resumption), a global count.
        initial_physical_nodes: Node count of the first run, for ``relaxed`` resumption.

    Returns:
        An int64 array of shape ``(nodes, ranks_per_node, workers_per_rank, batches_per_worker,
        batch_size)`` of sample positions, padded with -1.

    Raises:
        ValueError: On invalid arguments (see :func:`validate_partition_args` and
            :func:`plan_orig`) or, for ``relaxed``, a global batch size that the initial device
            count does not divide.
    """
    part = resolve_partition(algo, num_samples, num_canonical_nodes, num_physical_nodes,
                             ranks_per_node, workers_per_rank, batch_size, drop_first,
                             initial_physical_nodes)
    shape = (num_physical_nodes, ranks_per_node, workers_per_rank, part.batches, batch_size)
    grid = np.indices(shape, dtype=np.int64, sparse=True)
    return np.ascontiguousarray(np.broadcast_to(part.ids(*grid), shape))


def worker_partition(
    algo: str,
    num_samples: int,
    num_canonical_nodes: int,
    num_physical_nodes: int,
    ranks_per_node: int,
    workers_per_rank: int,
    batch_size: int = 1,
    drop_first: int = 0,
    initial_physical_nodes: int | None = None,
    *,
    node: int,
    rank_of_node: int,
    worker: int,
) -> np.ndarray:
    """One worker's slice of :func:`get_partitions`, flattened, computed without the full array.

    Equal to ``get_partitions(...)[node, rank_of_node, worker].ravel()``.

    Args:
        algo: See :func:`get_partitions`.
        num_samples: See :func:`get_partitions`.
        num_canonical_nodes: See :func:`get_partitions`.
        num_physical_nodes: See :func:`get_partitions`.
        ranks_per_node: See :func:`get_partitions`.
        workers_per_rank: See :func:`get_partitions`.
        batch_size: See :func:`get_partitions`.
        drop_first: See :func:`get_partitions`.
        initial_physical_nodes: See :func:`get_partitions`.
        node: This worker's node.
        rank_of_node: This worker's rank within its node.
        worker: This worker's index within its rank.

    Returns:
        A 1-D int64 array of ``batches_per_worker * batch_size`` sample positions, -1 for padding.

    Raises:
        ValueError: As :func:`get_partitions`, or if the coordinates are outside the topology.
    """
    for name, value, bound in (
        ("node", node, num_physical_nodes),
        ("rank_of_node", rank_of_node, ranks_per_node),
        ("worker", worker, workers_per_rank),
    ):
        if not 0 <= value < bound:
            raise ValueError(f"`{name}` must be in [0, {bound}), got {value}")
    part = resolve_partition(algo, num_samples, num_canonical_nodes, num_physical_nodes,
                             ranks_per_node, workers_per_rank, batch_size, drop_first,
                             initial_physical_nodes)
    if part.recut:
        return _recut_worker(part, node, rank_of_node, worker)
    return _orig_worker(part.plan, node, rank_of_node, worker)


# Elements per step when evaluating one worker's slice: the formulas' temporaries then stay small
# and cache-resident instead of costing a fresh full-size array (and its page faults) per step.
_CHUNK = 1 << 16


def _orig_worker(plan: OrigPlan, node: int, rank: int, worker: int) -> np.ndarray:
    """Fast path for one ``orig`` worker: its valid positions form a prefix of its slice."""
    b, w = plan.batch_size, plan.workers
    out = np.empty(plan.batches * b, np.int64)
    # Rank index of the worker's k-th element is (k // B) * W * B + worker * B + k % B, increasing
    # in k, so the elements below ``per_rank`` (the real ones) come first.
    first = worker * b
    full_batches, rest = divmod(max(plan.per_rank - first, 0), w * b)
    valid = min(full_batches * b + min(rest, b), out.size)
    out[valid:] = -1
    done = _tile_regular_batches(plan, node, rank, worker, out[:valid])
    for begin in range(done, valid, _CHUNK):
        _evaluate(plan, node, rank, worker, begin, min(begin + _CHUNK, valid), out)
    return out


def _evaluate(plan: OrigPlan, node: int, rank: int, worker: int, begin: int, end: int,
              out: np.ndarray) -> None:
    """``out[begin:end]``: elements ``begin..end-1`` of the worker's slice, by the full formula."""
    b, w = plan.batch_size, plan.workers
    k = np.arange(begin, end, dtype=np.int64)
    if b == 1:
        index = k * w + worker
    else:
        batch, slot = np.divmod(k, b)
        index = batch * (w * b) + worker * b + slot
    out[begin:end] = rank_ids(plan, node, rank, index)


def _tile_regular_batches(plan: OrigPlan, node: int, rank: int, worker: int,
                          out: np.ndarray) -> int:
    """Fill the leading batches that need no row fix-ups by tiling one period of batches.

    Batch ``a`` slot ``e`` of the worker reads global position ``t0 + a*sa + e*se``. Its canonical
    row ``t % C`` repeats every ``period = C / gcd(sa, C)`` batches, and the column then grows by
    ``period * sa / C``: away from the last column, the padding and the rank padding (all at the
    end, since ``t`` grows with the element index), the ids of batch ``a + period`` are those of
    batch ``a`` plus that constant.

    Returns:
        How many leading elements of ``out`` were filled.
    """
    b, c = plan.batch_size, plan.ncn
    if plan.tiled:
        return 0
    se = plan.nodes * plan.ranks
    sa = se * plan.workers * b
    t0 = plan.drop + node + plan.nodes * (rank + plan.ranks * worker * b)
    # First position that may need a fix-up: the last column, or the rank padding.
    special = c * (plan.row_len - 1) if (plan.num_samples % c or plan.padding) else \
        c * plan.padded_row_len
    special = min(special, plan.drop + node + plan.nodes * plan.per_node)
    regular = min(out.size // b, max(-(-(special - t0 - (b - 1) * se) // sa), 0))
    period = c // math.gcd(sa, c)
    repeats = regular // period
    if repeats < 2:
        return 0
    block = out[:period * b]
    _evaluate(plan, node, rank, worker, 0, period * b, out)
    tiles = out[:repeats * period * b].reshape(repeats, period * b)
    np.add(block, (np.arange(repeats, dtype=np.int64) * (period * sa // c))[:, None], out=tiles)
    return repeats * period * b


def _recut_worker(part: Partition, node: int, rank: int, worker: int) -> np.ndarray:
    """One worker of a ``relaxed`` re-cut, evaluated chunk by chunk."""
    out = np.empty(part.batches * part.batch_size, np.int64)
    for begin in range(0, out.size, _CHUNK):
        flat = np.arange(begin, min(begin + _CHUNK, out.size), dtype=np.int64)
        batch, slot = np.divmod(flat, part.batch_size)
        out[begin:begin + flat.size] = part.ids(node, rank, worker, batch, slot)
    return out
