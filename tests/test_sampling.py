"""Tests for frcnn_jax.sampling (fixed-size random subsampling)."""

import jax
import jax.numpy as jnp
import numpy as np

from frcnn_jax import sampling

sample_indices_jit = jax.jit(sampling.sample_indices, static_argnames="capacity")


def test_sample_indices_counts_distinct_and_limit():
    candidates = jnp.arange(50) % 3 == 0  # 17 candidates: 0, 3, ..., 48
    # limit: none or 30 (the capacity 10 binds), 4 and 0 (traced: one compile).
    for limit, expected in [(None, 10), (30, 10), (4, 4), (0, 0)]:
        indices, valid = sample_indices_jit(jax.random.key(1), candidates, capacity=10, limit=limit)
        indices, valid = np.asarray(indices), np.asarray(valid)
        chosen = indices[valid]
        assert len(chosen) == expected and len(set(chosen)) == expected
        assert np.all(chosen % 3 == 0)
        assert np.all(valid[:expected]) and not np.any(valid[expected:])  # valid is a prefix
        assert np.all(indices[~valid] == 0)


def test_sample_indices_capacity_larger_than_entries_pads():
    candidates = jnp.array([True, False, False, True])
    indices, valid = sample_indices_jit(jax.random.key(1), candidates, capacity=8)
    assert indices.shape == (8,) and sorted(np.asarray(indices)[np.asarray(valid)]) == [0, 3]


def test_sample_mask_is_uniform():
    # 4 of 8 candidates, 2000 draws: each candidate is picked about half the time.
    keys = jax.random.split(jax.random.key(0), 2000)
    candidates = jnp.arange(12) < 8
    masks = jax.jit(jax.vmap(lambda k: sampling.sample_mask(k, candidates, capacity=4)))(keys)
    assert np.all(np.asarray(masks.sum(1)) == 4)
    frequencies = np.asarray(masks.mean(0))
    np.testing.assert_allclose(frequencies[:8], 0.5, atol=0.05)
    assert np.all(frequencies[8:] == 0)


def test_priorities_do_not_depend_on_length():
    # What makes proposal_targets invariant to appended padded gt rows.
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        sampling.random_priorities(key, 5), sampling.random_priorities(key, 9)[:5]
    )
