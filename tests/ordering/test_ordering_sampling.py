"""Stream weighting and resampling equal the reference's (apply_weights, get_sampling,
StreamingDataset.resample_streams)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from mdsloader.ordering import StreamSpec, resample_streams, resolve_stream_choose
from mdsloader.ordering.sampling import choose_per_shard


def spec(sizes, **weight) -> StreamSpec:
    sizes = np.asarray(sizes, np.int64)
    return StreamSpec(int(sizes.sum()), sizes, **weight)


def ref_choose(reference, specs, epoch_size, seed):
    from streaming import Stream

    streams = []
    for s in specs:
        weight = {k: getattr(s, k) for k in ("proportion", "repeat", "choose")
                  if getattr(s, k) is not None}
        streams.append(Stream(local="/nonexistent-ordering-test", **weight))
    samples = np.array([s.num_samples for s in specs], np.int64)
    total = Stream.apply_weights(streams, samples, epoch_size, seed)
    chosen = [int(s.choose) for s in streams]
    assert sum(chosen) == total
    return chosen


def ref_resample(reference, specs, choose, *, epoch, seed, shuffle, method, granularity):
    """Run the reference's own ``StreamingDataset.resample_streams`` over these shard sizes."""
    from streaming import StreamingDataset

    sizes = np.concatenate([s.samples_per_shard for s in specs]).astype(np.int64)
    shards_per_stream = np.array([len(s.samples_per_shard) for s in specs], np.int64)
    holder = SimpleNamespace(
        shuffle_seed=seed, sampling_method=method, sampling_granularity=granularity,
        epoch_seed_change=shuffle and method == "balanced", num_streams=len(specs),
        shards_per_stream=shards_per_stream,
        shard_offset_per_stream=np.cumsum(shards_per_stream) - shards_per_stream,
        samples_per_shard=sizes, sample_offset_per_shard=np.cumsum(sizes) - sizes,
        streams=[SimpleNamespace(choose=np.int64(c)) for c in choose],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0 // 0 for empty shards
        return StreamingDataset.resample_streams(holder, epoch)


def random_specs(rng: np.random.Generator, scheme: str) -> list[StreamSpec]:
    specs = []
    for _ in range(int(rng.integers(1, 4))):
        sizes = rng.integers(0, 30, int(rng.integers(1, 6)))
        sizes[rng.integers(0, len(sizes))] += 1  # never an empty stream
        weight = {
            "proportion": {"proportion": float(rng.random() + 0.05)},
            "repeat": {"repeat": float(rng.choice([0.5, 1.0, 1.7, 2.0, 3.25]))},
            "choose": {"choose": int(rng.integers(0, 100))},
            "none": {},
        }[scheme]
        specs.append(spec(sizes, **weight))
    return specs


@pytest.mark.interop
@pytest.mark.parametrize("scheme", ["proportion", "repeat", "choose", "none"])
def test_stream_choose_matches_reference(reference, scheme):
    rng = np.random.default_rng(len(scheme))
    for _ in range(60):
        specs = random_specs(rng, scheme)
        total = sum(s.num_samples for s in specs)
        epoch_size = None
        if scheme in ("proportion", "none") and rng.random() < 0.7:
            epoch_size = int(total * rng.choice([0.4, 1.0, 1.7, 3.0])) + 1
        seed = int(rng.integers(0, 10_000))
        assert resolve_stream_choose(specs, epoch_size, seed) == ref_choose(reference, specs,
                                                                           epoch_size, seed)


@pytest.mark.interop
def test_mixed_weights_raise_like_the_reference(reference):
    from streaming import Stream

    specs = [spec([5], proportion=0.5), spec([5], repeat=2.0)]
    with pytest.raises(ValueError, match="incompatible"):
        Stream.validate_weights([Stream(local="/x", proportion=0.5), Stream(local="/y", repeat=2)])
    with pytest.raises(ValueError, match="incompatible"):
        resolve_stream_choose(specs, None, 0)
    with pytest.raises(ValueError, match="relatively"):
        ref_choose(reference, [spec([5], repeat=2.0)], 10, 0)
    with pytest.raises(ValueError, match="epoch_size"):
        resolve_stream_choose([spec([5], repeat=2.0)], 10, 0)


@pytest.mark.parametrize(
    ("weight", "match"),
    [({"proportion": 1.0, "repeat": 2.0}, "At most one"), ({"choose": -1}, "non-negative")],
)
def test_stream_spec_rejects_invalid_weights(weight, match):
    with pytest.raises(ValueError, match=match):
        spec([3, 4], **weight)


def test_stream_spec_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="num_samples"):
        StreamSpec(6, np.array([3, 4]))


def test_resolve_stream_choose_rejects_bad_inputs():
    with pytest.raises(ValueError, match="streams"):
        resolve_stream_choose([], None, 0)
    with pytest.raises(ValueError, match="no samples"):
        resolve_stream_choose([spec([0, 0])], None, 0)
    with pytest.raises(ValueError, match="epoch_size"):
        resolve_stream_choose([spec([3])], -1, 0)
    with pytest.raises(ValueError, match="proportion"):
        resolve_stream_choose([spec([3], proportion=0.0)], None, 0)


@pytest.mark.interop
def test_choose_per_shard_matches_reference_get_sampling(reference):
    from streaming.base.sampling import get_sampling

    rng = np.random.default_rng(2)
    for _ in range(300):
        sizes = rng.integers(0, 50, int(rng.integers(1, 12)))
        sizes[rng.integers(0, len(sizes))] += 1
        choose = int(rng.integers(0, 4 * sizes.sum()))
        args = (sizes, choose, int(rng.choice([1, 2, 3, 7])), int(rng.integers(0, 1000)),
                int(rng.integers(0, 3)), bool(rng.random() < 0.5))
        np.testing.assert_array_equal(choose_per_shard(*args), get_sampling(*args))


@pytest.mark.interop
@pytest.mark.parametrize("method", ["balanced", "fixed"])
@pytest.mark.parametrize("scheme", ["proportion", "repeat", "choose", "none"])
def test_resample_streams_matches_reference(reference, method, scheme):
    rng = np.random.default_rng(len(method) * 10 + len(scheme))
    for _ in range(25):
        specs = random_specs(rng, scheme)
        total = sum(s.num_samples for s in specs)
        epoch_size = int(total * rng.choice([0.5, 1.3])) + 1 if scheme == "proportion" else None
        seed = int(rng.integers(0, 10_000))
        choose = resolve_stream_choose(specs, epoch_size, seed)
        for epoch in (0, 1):
            kwargs = {"epoch": epoch, "seed": seed, "shuffle": bool(rng.random() < 0.7)}
            granularity = int(rng.choice([1, 3]))
            units, small = resample_streams(specs, choose, sampling_method=method,
                                            sampling_granularity=granularity, **kwargs)
            ref_units, ref_small = ref_resample(reference, specs, choose, method=method,
                                                granularity=granularity, **kwargs)
            np.testing.assert_array_equal(units, ref_units)
            np.testing.assert_array_equal(small, ref_small)
            assert units.sum() == sum(choose) == small.size


def test_fixed_sampling_draws_the_same_subset_every_epoch():
    specs = [spec([10, 10, 7], repeat=0.5)]
    choose = resolve_stream_choose(specs, None, 3)
    common = {"seed": 3, "shuffle": True, "sampling_granularity": 1}
    fixed = [resample_streams(specs, choose, epoch=e, sampling_method="fixed", **common)[1]
             for e in (0, 1)]
    np.testing.assert_array_equal(*fixed)
    balanced = [resample_streams(specs, choose, epoch=e, sampling_method="balanced", **common)[1]
                for e in (0, 1)]
    assert not np.array_equal(*balanced)


def test_resample_rejects_bad_arguments():
    specs = [spec([4, 4])]
    with pytest.raises(ValueError, match="sampling_method"):
        resample_streams(specs, [8], epoch=0, seed=0, shuffle=False, sampling_method="x",
                         sampling_granularity=1)
    with pytest.raises(ValueError, match="sampling_granularity"):
        resample_streams(specs, [5], epoch=0, seed=0, shuffle=False, sampling_method="fixed",
                         sampling_granularity=0)
    with pytest.raises(ValueError, match="choose_per_stream"):
        resample_streams(specs, [5, 5], epoch=0, seed=0, shuffle=False,
                         sampling_method="fixed", sampling_granularity=1)
