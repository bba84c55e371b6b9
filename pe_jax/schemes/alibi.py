"""ALiBi: linear biases on the logits (Press et al. 2021, "Train Short, Test Long",
arXiv 2108.12409).

``bias[h, i, j] = -m_h (i - j)`` with query position ``i`` and key position ``j``,
added after the ``1/sqrt(Dh)`` scaling. For ``H`` a power of two the slopes are
``m_h = 2^(-8h/H)``, ``h = 1..H``; otherwise the ``c = 2^floor(log2 H)`` slopes are
followed by every other slope of the ``2c`` list, in that order (not sorted).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from pe_jax.schemes import base


def _power_of_two_slopes(n: int) -> list[float]:
    ratio = 2.0 ** (-8.0 / n)
    return [ratio ** (h + 1) for h in range(n)]


def slopes(num_heads: int) -> np.ndarray:
    """Per-head slopes, float64, for any positive head count."""
    if num_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got {num_heads}")
    if math.log2(num_heads).is_integer():
        return np.array(_power_of_two_slopes(num_heads))
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = slopes(2 * closest)[0::2][: num_heads - closest]
    return np.concatenate([_power_of_two_slopes(closest), extra])


def bias(q_pos_BxL: jax.Array, k_pos_BxK: jax.Array, slopes_H: jax.Array) -> jax.Array:
    """``-m_h (i - j)`` as float32 ``BxHxLxK``; positive only where keys are future."""
    distance_BxLxK = q_pos_BxL[:, :, None] - k_pos_BxK[:, None, :]
    return -slopes_H[None, :, None, None] * distance_BxLxK[:, None].astype(jnp.float32)


class Alibi(base.PositionalScheme):
    enters_at = ("bias",)

    def bias(self, q_pos_BxL, k_pos_BxK, layer=0):
        del layer
        base.check_positions(q_pos_BxL, "query positions")
        base.check_positions(k_pos_BxK, "key positions")
        slopes_H = jnp.asarray(slopes(self.dims.num_heads), jnp.float32)
        return bias(q_pos_BxL, k_pos_BxK, slopes_H)


base.register("alibi", Alibi, summary="fixed per-head linear distance bias on logits")
