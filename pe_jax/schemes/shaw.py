"""Shaw relative position representations (Shaw, Uszkoreit and Vaswani 2018,
"Self-Attention with Relative Position Representations", arXiv 1803.02155).

Axis legend: B batch, L query positions, K key positions, H heads, Dh head width,
N layers, R = 2k + 1 table rows.

Sign convention: the relative distance is ``j - i`` (key minus query), as in the paper
and in tensor2tensor. It is clipped to ``[-k, k]`` and shifted by ``k``, so the row of
pair ``(i, j)`` is ``idx_ij = clip(pos_j - pos_i, -k, k) + k`` in ``[0, 2k]``; every
distance beyond ``k`` on one side shares the edge row. In a causal model only rows
``0..k`` are reached.

Key term, added inside the logits (the ``logits`` hook):
``e_ij += q_i . a^K[idx_ij] / sqrt(Dh)``, the same ``1/sqrt(Dh)`` that ``attend`` has
already applied to ``q_i . k_j``. It is computed without the ``L x K x Dh`` gather:
``q @ a^K^T`` gives ``BxHxLxR`` and the entries are picked along the last axis with
``idx``.

Value term, optional (``shaw_values``, the ``values`` hook):
``z_i += sum_j p_ij a^V[idx_ij]``. The probabilities are first summed per table row
(a scatter-add into ``BxHxLxR``), then multiplied by ``a^V``. The term is linear in
the probabilities, so blockwise attention may hand it unnormalised block probabilities.

Parameters: one ``a^K`` (and ``a^V``) table per layer, stacked ``[N, R, Dh]`` and picked
with the ``layer`` argument; within a layer the table is shared by every head, as in the
paper. They start as normal(0.02) draws: small next to the content terms, so the model
begins close to NoPE but with the rows already distinct. With zero tables the scheme
is exactly NoPE (tested).

Positional arithmetic is integer; the table terms are computed in float32 whatever the
compute dtype of ``q``.
"""

from __future__ import annotations

import dataclasses
import operator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pe_jax.schemes import base

INIT_STD = 0.02  # normal init of a^K and a^V


@dataclasses.dataclass(frozen=True)
class ShawOptions:
    clip: int = 128  # k: distances beyond k share the edge row
    values: bool = False  # also add the value term a^V

    def __post_init__(self):
        if isinstance(self.clip, bool) or not isinstance(self.clip, int) or self.clip <= 0:
            raise ValueError(f"shaw_clip must be a positive integer, got {self.clip!r}")


def relative_index(q_pos_BxL: jax.Array, k_pos_BxK: jax.Array, clip: int) -> jax.Array:
    """Table rows ``clip(k_pos_j - q_pos_i, -clip, clip) + clip``, int32 ``BxLxK``."""
    distance_BxLxK = k_pos_BxK[:, None, :].astype(jnp.int32) - q_pos_BxL[:, :, None].astype(
        jnp.int32
    )
    return jnp.clip(distance_BxLxK, -clip, clip) + clip


def key_term(q_BxLxHxDh: jax.Array, table_RxDh: jax.Array, idx_BxLxK: jax.Array) -> jax.Array:
    """``q_i . table[idx_ij]`` as float32 ``BxHxLxK`` (no scaling), via ``q @ table^T``."""
    scores_BxHxLxR = jnp.einsum(
        "blhd,rd->bhlr",
        q_BxLxHxDh.astype(jnp.float32),
        table_RxDh.astype(jnp.float32),
    )
    b, h, l, _ = scores_BxHxLxR.shape
    idx_BxHxLxK = jnp.broadcast_to(idx_BxLxK[:, None], (b, h, l, idx_BxLxK.shape[-1]))
    return jnp.take_along_axis(scores_BxHxLxR, idx_BxHxLxK, axis=-1)


def value_term(probs_BxHxLxK: jax.Array, table_RxDh: jax.Array, idx_BxLxK: jax.Array) -> jax.Array:
    """``sum_j p_ij table[idx_ij]`` as float32 ``BxLxHxDh``.

    The probabilities are summed per table row first (rows are few and many keys share
    the edge rows), so nothing of size ``L x K x Dh`` is built.
    """
    b, h, l, k = probs_BxHxLxK.shape
    rows = table_RxDh.shape[0]
    idx_BxHxLxK = jnp.broadcast_to(idx_BxLxK[:, None], (b, h, l, k))
    b_ix = jnp.arange(b)[:, None, None, None]
    h_ix = jnp.arange(h)[None, :, None, None]
    l_ix = jnp.arange(l)[None, None, :, None]
    per_row_BxHxLxR = (
        jnp.zeros((b, h, l, rows), jnp.float32)
        .at[b_ix, h_ix, l_ix, idx_BxHxLxK]
        .add(probs_BxHxLxK.astype(jnp.float32))
    )
    return jnp.einsum("bhlr,rd->blhd", per_row_BxHxLxR, table_RxDh.astype(jnp.float32))


class Shaw(base.PositionalScheme):
    enters_at = ("logits", "values")

    def _opts(self) -> ShawOptions:
        return self.options or ShawOptions()

    def setup(self):
        opts = self._opts()
        shape = (self.dims.num_layers, 2 * opts.clip + 1, self.dims.head_dim)
        self.key_table_NxRxDh = self.param("key_table", nn.initializers.normal(INIT_STD), shape)
        if opts.values:
            self.value_table_NxRxDh = self.param(
                "value_table", nn.initializers.normal(INIT_STD), shape
            )

    def logits(self, logits_BxHxLxK, q_BxLxHxDh, k_BxKxHxDh, q_pos_BxL, k_pos_BxK,
               mask_BxLxK, layer=0):
        del k_BxKxHxDh, mask_BxLxK
        base.check_positions(q_pos_BxL, "query positions")
        base.check_positions(k_pos_BxK, "key positions")
        idx_BxLxK = relative_index(q_pos_BxL, k_pos_BxK, self._opts().clip)
        term_BxHxLxK = key_term(q_BxLxHxDh, self.key_table_NxRxDh[layer], idx_BxLxK)
        scale = q_BxLxHxDh.shape[-1] ** -0.5  # as attend scales q . k
        return logits_BxHxLxK.astype(jnp.float32) + term_BxHxLxK * scale

    def values(self, probs_BxHxLxK, q_pos_BxL, k_pos_BxK, layer=0):
        if not self._opts().values:
            return None
        base.check_positions(q_pos_BxL, "query positions")
        base.check_positions(k_pos_BxK, "key positions")
        idx_BxLxK = relative_index(q_pos_BxL, k_pos_BxK, self._opts().clip)
        return value_term(probs_BxHxLxK, self.value_table_NxRxDh[layer], idx_BxLxK)


def options_from_config(config) -> ShawOptions:
    clip = base.config_get(config, "shaw_clip", 128)
    values = base.config_get(config, "shaw_values", False)
    if not isinstance(values, (bool, np.bool_)):
        raise ValueError(f"shaw_values must be a bool, got {values!r}")
    try:
        clip = operator.index(clip)  # int or numpy integer; refuse 2.5 and "16"
    except TypeError:
        raise ValueError(f"shaw_clip must be a positive integer, got {clip!r}") from None
    return ShawOptions(clip=clip, values=bool(values))


base.register(
    "shaw",
    Shaw,
    options_from_config,
    summary="learned clipped relative key (and value) embeddings inside attention",
)
