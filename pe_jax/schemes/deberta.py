"""DeBERTa disentangled attention with log-bucketed relative positions (He et al. 2020,
"DeBERTa: Decoding-enhanced BERT with Disentangled Attention", arXiv 2006.03654; the
log buckets of DeBERTa-v2/v3).

Axis legend: B batch, L query positions, K key positions, H heads, D model width,
Dh head width, N layers, R = 2S relative embedding rows.

Sign convention: ``delta(i, j) = pos_i - pos_j`` (query minus key), the opposite of
T5 and Shaw. The distance is log-bucketed (``log_bucket_position``) with bucket size
``S`` and maximum position ``M``: exact for ``|delta| <= S/2``, logarithmic beyond.

Each layer's logits are the sum of three terms, all divided by ``sqrt(3 Dh)``:
- content to content ``q_i . k_j`` (``attend`` has already divided it by ``sqrt(Dh)``,
  so the hook divides it again by ``sqrt(3)``);
- content to position ``q_i . K_r[c2p_ij]``, ``c2p_ij = clamp(b(delta(i, j)) + S, 0, 2S-1)``;
- position to content ``k_j . Q_r[p2c_ij]``, ``p2c_ij = clamp(b(delta(j, i)) + S, 0, 2S-1)``,
  the key's view of the query, so the bucket of ``pos_j - pos_i``.
``K_r`` and ``Q_r`` are the layer-normed relative embeddings projected to heads. Both
terms are computed as ``q @ K_r^T`` (``BxHxLxR``) and ``k @ Q_r^T`` (``BxHxKxR``) and
then gathered, never as an ``L x K x Dh`` tensor.

The clamp is deliberate and follows DeBERTa: every distance whose bucket falls outside
``[-S, S-1]`` (``|delta|`` about ``M`` or more) reads an edge row.

Parameters: one relative embedding table ``[2S, D]`` with one LayerNorm, shared by all
layers as in DeBERTa-v2; per-layer position projections ``[N, D, H, Dh]`` for keys and
for queries. DeBERTa-v3 (``share_att_key``) reuses each layer's content q/k projections
for the positions; here the content projections belong to the attention layer, which a
scheme cannot reach, so each layer gets its own pair of position projections (as
DeBERTa's ``pos_key_proj``/``pos_query_proj`` without sharing). Init: the table
normal(0.02) as in DeBERTa (the LayerNorm rescales its rows), the projections LeCun
normal like the model's own projections.

DeBERTa is bidirectional; in this causal decoder every visible pair has
``delta(i, j) >= 0``, so c2p reads only rows ``S..2S-1`` and p2c only rows ``0..S``
(the other rows get no gradient). Positional math is float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pe_jax.schemes import base

TABLE_INIT_STD = 0.02  # DeBERTa's initializer_range
LAYER_NORM_EPS = 1e-7  # DeBERTa's layer_norm_eps


@dataclasses.dataclass(frozen=True)
class DebertaOptions:
    buckets: int = 64  # S = position_buckets = att_span; the table has 2S rows
    max_position: int = 512  # M: where the logarithmic buckets reach S

    def __post_init__(self):
        if self.buckets < 2:
            raise ValueError(f"deberta_buckets must be at least 2, got {self.buckets}")
        if self.max_position <= self.buckets // 2 + 1:
            raise ValueError(
                f"deberta_max_position must exceed deberta_buckets // 2 + 1 = "
                f"{self.buckets // 2 + 1}, got {self.max_position}"
            )


@functools.lru_cache(maxsize=None)
def _exact_buckets(bucket_size: int, max_position: int) -> np.ndarray:
    """Bucket magnitudes for ``|r| = 0..max_position``, evaluated in float64."""
    mid = bucket_size // 2
    dist = np.arange(max_position + 1, dtype=np.float64)
    safe = np.maximum(dist, mid)
    far = mid + np.ceil(np.log(safe / mid) / math.log((max_position - 1) / mid) * (mid - 1))
    return np.where(dist <= mid, dist, far).astype(np.int32)


def log_bucket_position(relative: jax.Array, bucket_size: int, max_position: int) -> jax.Array:
    """DeBERTa-v2's ``make_log_bucket_position``: int32 buckets, odd in ``relative``.

    With ``m = bucket_size // 2``: ``b(r) = r`` for ``|r| <= m``, else
    ``sign(r) (m + ceil(ln(|r|/m) / ln((M-1)/m) (m-1)))``; not clipped.

    ``ceil`` of a ratio of logs is fragile where the ratio is mathematically an integer
    (``|r| = M - 1`` is always such a point): float32 can land just above it and add one
    (it does for ``(S, M) = (10, 35)`` and ``(12, 22)``, not for the default ``(64, 512)``).
    So magnitudes up to ``M`` come from a float64 table built once per ``(S, M)``; past
    ``M`` (where attention clamps every bucket to an edge row anyway) the formula runs
    in float32.
    """
    mid = bucket_size // 2
    r = relative.astype(jnp.int32)
    dist = jnp.abs(r)

    table = jnp.asarray(_exact_buckets(bucket_size, max_position))
    near = table[jnp.minimum(dist, max_position)]

    safe = jnp.maximum(dist, mid).astype(jnp.float32)  # the log branch is unused below mid
    ratio = jnp.log(safe / mid) / math.log((max_position - 1) / mid)
    far = mid + jnp.ceil(ratio * (mid - 1)).astype(jnp.int32)

    return jnp.sign(r) * jnp.where(dist <= max_position, near, far)


def relative_rows(
    from_pos_BxL: jax.Array, to_pos_BxK: jax.Array, opts: DebertaOptions
) -> jax.Array:
    """Table rows ``clamp(b(from_i - to_j) + S, 0, 2S - 1)``, int32 ``BxLxK``."""
    delta_BxLxK = from_pos_BxL[:, :, None].astype(jnp.int32) - to_pos_BxK[:, None, :].astype(
        jnp.int32
    )
    buckets_BxLxK = log_bucket_position(delta_BxLxK, opts.buckets, opts.max_position)
    return jnp.clip(buckets_BxLxK + opts.buckets, 0, 2 * opts.buckets - 1)


def _gather_rows(scores_BxHxLxR: jax.Array, rows_BxLxK: jax.Array) -> jax.Array:
    b, h, l, _ = scores_BxHxLxR.shape
    rows_BxHxLxK = jnp.broadcast_to(rows_BxLxK[:, None], (b, h, l, rows_BxLxK.shape[-1]))
    return jnp.take_along_axis(scores_BxHxLxR, rows_BxHxLxK, axis=-1)


def position_terms(
    q_BxLxHxDh: jax.Array,
    k_BxKxHxDh: jax.Array,
    k_rel_RxHxDh: jax.Array,
    q_rel_RxHxDh: jax.Array,
    c2p_rows_BxLxK: jax.Array,
    p2c_rows_BxKxL: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Unscaled float32 ``(c2p, p2c)``, both ``BxHxLxK``.

    ``c2p[i, j] = q_i . K_r[c2p_rows[i, j]]`` and ``p2c[i, j] = k_j . Q_r[p2c_rows[j, i]]``.
    """
    f32 = jnp.float32
    c2p_BxHxLxR = jnp.einsum("blhd,rhd->bhlr", q_BxLxHxDh.astype(f32), k_rel_RxHxDh.astype(f32))
    p2c_BxHxKxR = jnp.einsum("bkhd,rhd->bhkr", k_BxKxHxDh.astype(f32), q_rel_RxHxDh.astype(f32))
    c2p_BxHxLxK = _gather_rows(c2p_BxHxLxR, c2p_rows_BxLxK)
    p2c_BxHxKxL = _gather_rows(p2c_BxHxKxR, p2c_rows_BxKxL)
    return c2p_BxHxLxK, jnp.swapaxes(p2c_BxHxKxL, -1, -2)


class Deberta(base.PositionalScheme):
    enters_at = ("logits",)

    def _opts(self) -> DebertaOptions:
        return self.options or DebertaOptions()

    def setup(self):
        opts = self._opts()
        dims = self.dims
        self.rel_embeddings_RxD = self.param(
            "rel_embeddings",
            nn.initializers.normal(TABLE_INIT_STD),
            (2 * opts.buckets, dims.d_model),
        )
        self.rel_norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32)
        proj_init = nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=1, out_axis=(2, 3), batch_axis=0
        )
        proj_shape = (dims.num_layers, dims.d_model, dims.num_heads, dims.head_dim)
        self.pos_key_NxDxHxDh = self.param("pos_key", proj_init, proj_shape)
        self.pos_query_NxDxHxDh = self.param("pos_query", proj_init, proj_shape)

    def logits(self, logits_BxHxLxK, q_BxLxHxDh, k_BxKxHxDh, q_pos_BxL, k_pos_BxK,
               mask_BxLxK, layer=0):
        del mask_BxLxK
        base.check_positions(q_pos_BxL, "query positions")
        base.check_positions(k_pos_BxK, "key positions")
        opts = self._opts()

        rel_RxD = self.rel_norm(self.rel_embeddings_RxD.astype(jnp.float32))
        k_rel_RxHxDh = jnp.einsum("rd,dhe->rhe", rel_RxD, self.pos_key_NxDxHxDh[layer])
        q_rel_RxHxDh = jnp.einsum("rd,dhe->rhe", rel_RxD, self.pos_query_NxDxHxDh[layer])

        # c2p reads delta(i, j) = q_pos - k_pos; p2c reads delta(j, i) = k_pos - q_pos.
        c2p_rows_BxLxK = relative_rows(q_pos_BxL, k_pos_BxK, opts)
        p2c_rows_BxKxL = relative_rows(k_pos_BxK, q_pos_BxL, opts)
        c2p, p2c = position_terms(
            q_BxLxHxDh, k_BxKxHxDh, k_rel_RxHxDh, q_rel_RxHxDh, c2p_rows_BxLxK, p2c_rows_BxKxL
        )

        # attend gave c2c / sqrt(Dh); DeBERTa wants (c2c + c2p + p2c) / sqrt(3 Dh).
        head_dim = q_BxLxHxDh.shape[-1]
        c2c_part = logits_BxHxLxK.astype(jnp.float32) * (1.0 / math.sqrt(3.0))
        return c2c_part + (c2p + p2c) * (1.0 / math.sqrt(3.0 * head_dim))


def options_from_config(config) -> DebertaOptions:
    return DebertaOptions(
        buckets=int(base.config_get(config, "deberta_buckets", 64)),
        max_position=int(base.config_get(config, "deberta_max_position", 512)),
    )


base.register(
    "deberta",
    Deberta,
    options_from_config,
    summary="disentangled content/position attention with log-bucketed distances",
)
