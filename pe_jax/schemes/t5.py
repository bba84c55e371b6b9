"""T5 relative position buckets (Raffel et al. 2020, arXiv 1910.10683).

The input is ``r = j - i`` (key minus query). In the causal form every key in the
future collapses onto bucket 0; distances ``n = i - j`` below ``num_buckets / 2`` get a
bucket each, longer ones share logarithmically wider buckets up to ``max_distance``,
and everything beyond lands in the last bucket. One learned table ``[num_buckets, H]``
is shared by every layer, as in T5. As in T5 the table is the only positional signal;
unlike T5 we keep the ``1/sqrt(Dh)`` scaling of the content logits.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from pe_jax.schemes import base


@dataclasses.dataclass(frozen=True)
class T5Options:
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = False

    def __post_init__(self):
        exact = self.num_buckets // (4 if self.bidirectional else 2)
        if self.num_buckets < 2 or exact < 1:
            raise ValueError(f"t5_num_buckets is too small: {self.num_buckets}")
        if self.max_distance <= exact:
            raise ValueError(
                f"t5_max_distance must exceed the {exact} exact buckets, got "
                f"{self.max_distance}"
            )


def bucket(
    relative_position: jax.Array,
    num_buckets: int = 32,
    max_distance: int = 128,
    bidirectional: bool = False,
) -> jax.Array:
    """Bucket ids (int32) for ``relative_position = key_pos - query_pos``."""
    n = -relative_position.astype(jnp.int32)
    offset = jnp.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        offset = jnp.where(n < 0, num_buckets, 0)
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2

    # The log branch only matters where n >= max_exact; keep its argument >= 1 so
    # that the unused entries stay finite (no log(0) = -inf cast to an integer).
    n_safe = jnp.maximum(n, max_exact).astype(jnp.float32)
    log_ratio = jnp.log(n_safe / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return offset + jnp.where(n < max_exact, n, large)


class T5Bias(base.PositionalScheme):
    enters_at = ("bias",)

    def setup(self):
        opts = self.options or T5Options()
        self.table_NBxH = self.param(
            "table", nn.initializers.normal(0.1), (opts.num_buckets, self.dims.num_heads)
        )

    def bias(self, q_pos_BxL, k_pos_BxK, layer=0):
        del layer
        base.check_positions(q_pos_BxL, "query positions")
        base.check_positions(k_pos_BxK, "key positions")
        opts = self.options or T5Options()
        relative_BxLxK = k_pos_BxK[:, None, :] - q_pos_BxL[:, :, None]
        ids_BxLxK = bucket(relative_BxLxK, opts.num_buckets, opts.max_distance, opts.bidirectional)
        bias_BxLxKxH = self.table_NBxH[ids_BxLxK]  # ids are in range by construction
        return jnp.moveaxis(bias_BxLxKxH, -1, 1)


def _options(config) -> T5Options:
    return T5Options(
        num_buckets=int(base.config_get(config, "t5_num_buckets", 32)),
        max_distance=int(base.config_get(config, "t5_max_distance", 128)),
    )


base.register("t5", T5Bias, _options, summary="learned bucketed relative bias on logits")
