"""Validation of the StreamingDataset keyword arguments that shape the sample order.

Kept apart from ``dataset.py`` so the checks are plain functions, testable without torch, and the
dataset constructor stays short (the reference's is 300 lines).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdsloader.ordering import BATCHING_METHODS, PARTITION_ALGOS, SAMPLING_METHODS, SHUFFLE_ALGOS

_ABBREV = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_count(value: int | float | str) -> int:
    """Parse a sample count such as ``1000``, ``"100k"``, ``"64M"``, ``"1.5b"`` (decimal units).

    Raises:
        ValueError: An unknown suffix or a non-number.
    """
    if isinstance(value, int | float):
        return int(value)
    text = value.strip().lower()
    unit = _ABBREV.get(text[-1:], 1)
    number = text[:-1] if unit != 1 else text
    try:
        return int(float(number) * unit)
    except ValueError as exc:
        raise ValueError(f"unsupported sample count {value!r} (use e.g. 100k, 64m, 2b)") from exc


@dataclass(frozen=True, slots=True)
class OrderOptions:
    """The validated knobs of epoch construction (everything but NCN defaults, resolved later)."""

    epoch_size: int | None
    sampling_method: str
    sampling_granularity: int
    partition_algo: str
    num_canonical_nodes: int | None
    batch_size: int | None
    shuffle: bool
    shuffle_algo: str
    shuffle_seed: int
    shuffle_block_size: int | None
    batching_method: str
    replication: int | None


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        # "Invalid sampling method: ..." is the reference's wording (users search for it).
        label = name.replace("_", " ")
        raise ValueError(f"Invalid {label}: {value!r}. `{name}` must be one of {allowed}.")


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or int(value) < 1):
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def validate_order_options(
    *,
    epoch_size: int | str | None,
    sampling_method: str,
    sampling_granularity: int,
    partition_algo: str,
    num_canonical_nodes: int | None,
    batch_size: int | None,
    shuffle: bool,
    shuffle_algo: str,
    shuffle_seed: int,
    shuffle_block_size: int | None,
    batching_method: str,
    replication: int | None,
) -> OrderOptions:
    """Check the order-related arguments like the reference.

    Raises:
        ValueError: An invalid value (same conditions as the reference).
    """
    _check_choice("sampling_method", sampling_method, SAMPLING_METHODS)
    _check_choice("partition_algo", partition_algo, PARTITION_ALGOS)
    _check_choice("shuffle_algo", shuffle_algo, SHUFFLE_ALGOS)
    _check_choice("batching_method", batching_method, BATCHING_METHODS)
    for name, value in (
        ("sampling_granularity", sampling_granularity),
        ("num_canonical_nodes", num_canonical_nodes),
        ("batch_size", batch_size),
        ("shuffle_block_size", shuffle_block_size),
        ("replication", replication),
    ):
        _check_positive(name, value)
    if shuffle_seed < 0:
        raise ValueError(f"`shuffle_seed` must be a non-negative integer, got {shuffle_seed}")
    size = parse_count(epoch_size) if epoch_size else None
    if size is not None and size < 0:
        raise ValueError(f"Epoch size cannot be negative. Received {size}.")
    return OrderOptions(
        epoch_size=size,
        sampling_method=sampling_method,
        sampling_granularity=int(sampling_granularity),
        partition_algo=partition_algo,
        num_canonical_nodes=num_canonical_nodes,
        batch_size=batch_size,
        shuffle=bool(shuffle),
        shuffle_algo=shuffle_algo,
        shuffle_seed=int(shuffle_seed),
        shuffle_block_size=shuffle_block_size,
        batching_method=batching_method,
        replication=replication,
    )
