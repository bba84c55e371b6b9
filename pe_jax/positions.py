"""Position ids fed to the schemes.

Axis legend: B batch, L sequence length.

Randomized positional encodings (Ruoss et al. 2023, "Randomized Positional Encodings Boost
Length Generalization of Transformers", arXiv 2305.16843): during training, a sequence of
length L gets the positions of a uniformly random sorted L-subset of ``0 .. max_len - 1``
instead of ``0 .. L - 1``, so the positions of longer test sequences (up to ``max_len``)
have been seen in training. Whatever scheme consumes the ids (absolute table, rotation,
bias) is unchanged; the same ids serve q and k. Evaluation is meant to use plain ``arange``.

Unlike the reference code, which draws one subset per batch, every sequence draws its own
(from its own key, split from the one given).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_positions(key: jax.Array, batch: int, length: int, max_len: int) -> jax.Array:
    """Sorted random positions, int32 ``BxL``: per row ``length`` distinct values in
    ``[0, max_len)``, strictly increasing, each subset equally likely.

    ``length == max_len`` gives ``arange(max_len)`` in every row. ``batch``, ``length`` and
    ``max_len`` are static Python ints (they fix shapes). Cost: one permutation of
    ``max_len`` per row.

    Raises:
      ValueError: ``length > max_len``, or a negative or non-integer size.
    """
    for name, value in (("batch", batch), ("length", length), ("max_len", max_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative Python int, got {value!r}")
    if length > max_len:
        raise ValueError(
            f"cannot draw {length} distinct positions (length {length}) from "
            f"max_len {max_len}; raise random_positions_max to at least {length}"
        )

    def one_row(row_key):
        subset_L = jax.random.permutation(row_key, max_len)[:length]
        return jnp.sort(subset_L).astype(jnp.int32)

    return jax.vmap(one_row)(jax.random.split(key, batch))
