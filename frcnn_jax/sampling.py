"""Fixed-size random subsampling, shared by the RPN and RoI-head target assignment.

Shape shorthand: N candidates, K the static sample capacity (``capacity``).

The seed draws samples with ``np.random.choice(index, size, replace=False)`` and
detectron2 with ``torch.randperm`` plus slicing: both have data-dependent
shapes. Here every entry gets an independent uniform random priority, the K
candidates with the highest priorities are taken with ``lax.top_k`` (a random
permutation truncated to K), and a possibly traced ``limit`` keeps a prefix of
them, i.e. the candidates whose running count in that random order is at most
``limit`` (the cumulative-sum selection of TF Model Garden's balanced sampler
and axlearn). Shapes never depend on data, so this jits and vmaps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def random_priorities(key: jax.Array, n: int) -> jnp.ndarray:
    """Independent uniform priorities, one per entry.

    Args:
      key: PRNG key.
      n: static number of entries.

    Returns:
      float32 ``[n]`` in [0, 1). Entry i depends only on ``(key, i)``, so
      appending entries (e.g. padded gt rows that join the RoI candidates)
      leaves the priorities, hence the samples, of the earlier entries unchanged.
    """
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(n, dtype=jnp.uint32))
    return jax.vmap(jax.random.uniform)(keys)


def sample_indices(
    key: jax.Array,
    candidates: jnp.ndarray,
    *,
    capacity: int,
    limit: int | jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """A uniformly random subset of the candidates, without replacement, as indices.

    Args:
      key: PRNG key.
      candidates: bool ``[N]``, entries that may be sampled.
      capacity: static capacity K of the output.
      limit: optional int (may be traced) further capping the number sampled.

    Returns:
      ``(indices int32[K], valid bool[K])``: ``min(K, limit, sum(candidates))``
      distinct candidate indices in random order, valid ones first; padding
      slots hold index 0 and ``valid`` False.
    """
    candidates = jnp.asarray(candidates, bool)
    n = candidates.shape[0]
    k = min(capacity, n)
    if k == 0:
        return jnp.zeros((capacity,), jnp.int32), jnp.zeros((capacity,), bool)
    # Non-candidates get priority -1, below every candidate's [0, 1).
    priorities = jnp.where(candidates, random_priorities(key, n), -1.0)  # [N]
    top_priorities, indices = lax.top_k(priorities, k)  # [k], descending
    valid = top_priorities >= 0.0
    if limit is not None:
        valid &= jnp.arange(k) < limit
    indices = jnp.where(valid, indices, 0).astype(jnp.int32)
    # Fewer entries than capacity: pad statically.
    indices = jnp.pad(indices, (0, capacity - k))
    valid = jnp.pad(valid, (0, capacity - k))
    return indices, valid


def sample_mask(
    key: jax.Array,
    candidates: jnp.ndarray,
    *,
    capacity: int,
    limit: int | jnp.ndarray | None = None,
) -> jnp.ndarray:
    """``sample_indices`` as a mask over the candidates.

    Returns:
      bool ``[N]``: True for the ``min(capacity, limit, sum(candidates))``
      sampled candidates.
    """
    indices, valid = sample_indices(key, candidates, capacity=capacity, limit=limit)
    # Scatter-max: padding slots (index 0, False) cannot clear a sampled index 0.
    return jnp.zeros(candidates.shape, bool).at[indices].max(valid)
