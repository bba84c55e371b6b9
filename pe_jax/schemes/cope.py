"""CoPE, contextual position encoding (Golovneva et al. 2024, "Contextual Position
Encoding: Learning to Count What's Important", arXiv 2405.18719).

Axis legend: B batch, L query positions, K key positions, H heads, Dh head width,
N layers, P = npos table rows.

Positions are counted, not read: each visible key gets a gate
``g_ij = sigmoid(s_ij)`` from the attention logit ``s_ij`` (already divided by
``sqrt(Dh)``; hidden keys get gate 0), and the position of key ``j`` seen from query
``i`` is ``p_ij = sum_{t=j..i} g_it``, a cumulative sum over keys taken from the query
backwards, capped at ``P - 1``. The position is fractional, so the term added to the
logit interpolates between the two neighbouring integer positions:
``z_i[p] = q_i . e[p]`` and
``cope_ij = (p - floor p) z_i[ceil p] + (1 - (p - floor p)) z_i[floor p]``.
As in the paper's code the term is not divided by ``sqrt(Dh)``. Gradients reach the
positions only through the interpolation weight (``floor``/``ceil`` are flat).

The sum over ``t = j..i`` is a reverse cumulative sum along the key axis, so keys must
be stored in the order of their positions (as the decoder stores them); hidden keys,
future ones or another packed segment's, contribute nothing because their gate is 0.
Query and key positions themselves are never read (they are still checked).

Parameters: one table ``e`` per layer, stacked ``[N, P, Dh]`` and picked with the
``layer`` argument, shared by the heads of a layer. It starts at zero, as in
x-transformers, so an untrained model is exactly NoPE.

All of the above runs in float32 whatever the compute dtype of ``q``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from pe_jax.schemes import base


@dataclasses.dataclass(frozen=True)
class CopeOptions:
    npos: int = 64  # P: rows of e; counted positions are capped at P - 1

    def __post_init__(self):
        if self.npos < 1:
            raise ValueError(f"cope_npos must be a positive integer, got {self.npos}")


def contextual_positions(
    logits_BxHxLxK: jax.Array, mask_BxLxK: jax.Array, npos: int
) -> jax.Array:
    """``p_ij = min(sum_{t >= j, visible} sigmoid(logits_it), npos - 1)``, float32."""
    gates_BxHxLxK = jnp.where(
        mask_BxLxK[:, None], jax.nn.sigmoid(logits_BxHxLxK.astype(jnp.float32)), 0.0
    )
    counts_BxHxLxK = jnp.flip(jnp.cumsum(jnp.flip(gates_BxHxLxK, -1), axis=-1), -1)
    return jnp.minimum(counts_BxHxLxK, npos - 1)


def interpolate(z_BxHxLxP: jax.Array, pos_BxHxLxK: jax.Array) -> jax.Array:
    """Linear interpolation of ``z`` (one value per integer position) at ``pos``."""
    lower = jnp.floor(pos_BxHxLxK)
    weight = pos_BxHxLxK - lower
    z_lower = jnp.take_along_axis(z_BxHxLxP, lower.astype(jnp.int32), axis=-1)
    z_upper = jnp.take_along_axis(z_BxHxLxP, jnp.ceil(pos_BxHxLxK).astype(jnp.int32), axis=-1)
    return weight * z_upper + (1.0 - weight) * z_lower


class Cope(base.PositionalScheme):
    enters_at = ("logits",)
    # Gates are counted from each key up to the query: rows do not split into key
    # blocks (see pe_jax.attention).
    key_blocks_independent = False

    def _opts(self) -> CopeOptions:
        return self.options or CopeOptions()

    def setup(self):
        shape = (self.dims.num_layers, self._opts().npos, self.dims.head_dim)
        self.table_NxPxDh = self.param("table", nn.initializers.zeros, shape)

    def logits(self, logits_BxHxLxK, q_BxLxHxDh, k_BxKxHxDh, q_pos_BxL, k_pos_BxK,
               mask_BxLxK, layer=0):
        del k_BxKxHxDh
        base.check_positions(q_pos_BxL, "query positions")
        base.check_positions(k_pos_BxK, "key positions")
        logits_BxHxLxK = logits_BxHxLxK.astype(jnp.float32)

        pos_BxHxLxK = contextual_positions(logits_BxHxLxK, mask_BxLxK, self._opts().npos)
        z_BxHxLxP = jnp.einsum(
            "blhd,pd->bhlp", q_BxLxHxDh.astype(jnp.float32), self.table_NxPxDh[layer]
        )
        return logits_BxHxLxK + interpolate(z_BxHxLxP, pos_BxHxLxK)


def options_from_config(config) -> CopeOptions:
    return CopeOptions(npos=int(base.config_get(config, "cope_npos", 64)))


base.register(
    "cope",
    Cope,
    options_from_config,
    summary="gated contextual counts as fractional positions, interpolated q.e[p] on logits",
)
