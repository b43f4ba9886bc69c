"""Closed form of the ``orig`` partition, and one worker's slice of it (mds-format.md 3.4).

The reference builds the whole ``(nodes, ranks, workers, batches, batch_size)`` array with a chain
of reshapes and transposes. Every one of those steps is an index map, so here they are composed into
one function from (node, rank, worker, batch, slot) to a sample position:

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


# Elements per step when evaluating one worker's slice: the formulas' temporaries then stay small
# and cache-resident instead of costing a fresh full-size array (and its page faults) per step.
_CHUNK = 1 << 16


def orig_worker(plan: OrigPlan, node: int, rank: int, worker: int) -> np.ndarray:
    """One worker's flattened slice of the ``orig`` partition (-1 padded).

    Args:
        plan: The partition plan.
        node: The worker's node.
        rank: The worker's rank within its node.
        worker: The worker's index within its rank.

    Returns:
        ``batches * batch_size`` sample positions; the real ones come first, then -1.
    """
    out = np.empty(plan.batches * plan.batch_size, np.int64)
    valid = orig_worker_valid(plan, worker)
    out[valid:] = -1
    done = _tile_regular_batches(plan, node, rank, worker, out[:valid])
    for begin in range(done, valid, _CHUNK):
        _evaluate(plan, node, rank, worker, begin, min(begin + _CHUNK, valid), out)
    return out


def _evaluate(plan: OrigPlan, node: int, rank: int, worker: int, begin: int, end: int,
              out: np.ndarray) -> None:
    """``out[begin:end]``: elements ``begin..end-1`` of the worker's slice, by the full formula."""
    out[begin:end] = orig_worker_range(plan, node, rank, worker, begin, end)


def orig_worker_valid(plan: OrigPlan, worker: int) -> int:
    """How many leading elements of the worker's slice are real (the rest is -1 padding)."""
    b, w = plan.batch_size, plan.workers
    # Rank index of the worker's k-th element is (k // B) * W * B + worker * B + k % B, increasing
    # in k, so the elements below ``per_rank`` (the real ones) come first.
    full_batches, rest = divmod(max(plan.per_rank - worker * b, 0), w * b)
    return min(full_batches * b + min(rest, b), plan.batches * b)


def orig_worker_range(plan: OrigPlan, node: int, rank: int, worker: int, begin: int,
                      end: int) -> np.ndarray:
    """Elements ``begin..end-1`` (all real: below :func:`orig_worker_valid`) of a worker's slice."""
    b, w = plan.batch_size, plan.workers
    k = np.arange(begin, end, dtype=np.int64)
    if b == 1:
        index = k * w + worker
    else:
        batch, slot = np.divmod(k, b)
        index = batch * (w * b) + worker * b + slot
    return rank_ids(plan, node, rank, index)


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
