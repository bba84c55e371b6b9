"""A small decoder-only transformer whose positional scheme is a plug-in.

Axis legend: B batch, L query positions, K key positions, H heads, D model width,
Dh head width, F MLP width, V vocabulary.

Pre-RMSNorm blocks, causal attention, GELU MLP, untied output head. Positions are an
explicit integer argument; the attention layer asks the scheme for its hooks and never
branches on the scheme's name. Parameters are float32; activations run in
``compute_dtype``; softmax and the output logits are float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pe_jax import schemes
from pe_jax.schemes import base

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the parameters (checkpoints are tied to it)."""

    pe: str = "rope"
    vocab_size: int = 256
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    max_len: int = 128  # the training length; learned tables cover it
    compute_dtype: str = "float32"
    pe_config: Any = None  # the config the scheme reads its options from

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_ratio", "max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}"
            )
        if self.compute_dtype not in DTYPES:
            raise ValueError(
                f"compute_dtype must be one of {sorted(DTYPES)}, got {self.compute_dtype!r}"
            )
        schemes.get(self.pe)  # unknown scheme -> ValueError listing the known ones

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def dims(self) -> base.ModelDims:
        return base.ModelDims(
            d_model=self.d_model,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            num_layers=self.num_layers,
            max_len=self.max_len,
        )

    @property
    def dtype(self):
        return DTYPES[self.compute_dtype]


class RMSNorm(nn.Module):
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD):
        scale_D = self.param("scale", nn.initializers.ones, (x_BxLxD.shape[-1],))
        x32 = x_BxLxD.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale_D).astype(self.dtype)


def causal_mask(q_pos_BxL: jax.Array, k_pos_BxK: jax.Array, segment_BxL=None, k_segment_BxK=None):
    """``True`` where query ``i`` may attend to key ``j``: ``pos_j <= pos_i``.

    Built from positions, so it also serves cached decoding (a key slot not yet written
    carries a position past every query) and sorted randomized positions. Packed rows
    pass segment ids, and keys of another segment are hidden.
    """
    mask_BxLxK = k_pos_BxK[:, None, :] <= q_pos_BxL[:, :, None]
    if segment_BxL is not None:
        k_segment_BxK = segment_BxL if k_segment_BxK is None else k_segment_BxK
        mask_BxLxK &= segment_BxL[:, :, None] == k_segment_BxK[:, None, :]
    return mask_BxLxK


def attend(
    q_BxLxHxDh: jax.Array,
    k_BxKxHxDh: jax.Array,
    v_BxKxHxDh: jax.Array,
    q_pos_BxL: jax.Array,
    k_pos_BxK: jax.Array,
    mask_BxLxK: jax.Array,
    scheme: base.PositionalScheme,
    layer: int | jax.Array,
) -> jax.Array:
    """Dense attention with the scheme's bias and logit hooks; softmax in float32."""
    head_dim = q_BxLxHxDh.shape[-1]
    logits_BxHxLxK = jnp.einsum(
        "blhd,bkhd->bhlk", q_BxLxHxDh, k_BxKxHxDh, preferred_element_type=jnp.float32
    ) * (head_dim**-0.5)

    bias = scheme.bias(q_pos_BxL, k_pos_BxK, layer)
    if bias is not None:
        logits_BxHxLxK = logits_BxHxLxK + bias
    logits_BxHxLxK = scheme.logits(
        logits_BxHxLxK, q_BxLxHxDh, k_BxKxHxDh, q_pos_BxL, k_pos_BxK, mask_BxLxK, layer
    )

    big_negative = jnp.finfo(jnp.float32).min
    logits_BxHxLxK = jnp.where(mask_BxLxK[:, None], logits_BxHxLxK, big_negative)
    probs_BxHxLxK = jax.nn.softmax(logits_BxHxLxK, axis=-1)
    out_BxLxHxDh = jnp.einsum(
        "bhlk,bkhd->blhd", probs_BxHxLxK.astype(v_BxKxHxDh.dtype), v_BxKxHxDh
    )
    extra = scheme.values(probs_BxHxLxK, q_pos_BxL, k_pos_BxK, layer)
    if extra is not None:
        out_BxLxHxDh = out_BxLxHxDh + extra.astype(out_BxLxHxDh.dtype)
    return out_BxLxHxDh


class Attention(nn.Module):
    config: ModelConfig
    scheme: base.PositionalScheme
    layer: int

    @nn.compact
    def __call__(self, x_BxLxD, pos_BxL, mask_BxLxL):
        cfg = self.config
        qkv_BxLx3xHxDh = nn.DenseGeneral(
            (3, cfg.num_heads, cfg.head_dim), use_bias=False, dtype=cfg.dtype, name="qkv"
        )(x_BxLxD)
        q, k, v = (qkv_BxLx3xHxDh[:, :, i] for i in range(3))
        q, k = self.scheme.rotate(q, k, pos_BxL, pos_BxL)
        out_BxLxHxDh = attend(q, k, v, pos_BxL, pos_BxL, mask_BxLxL, self.scheme, self.layer)
        return nn.DenseGeneral(
            cfg.d_model, axis=(-2, -1), use_bias=False, dtype=cfg.dtype, name="out"
        )(out_BxLxHxDh)


class Block(nn.Module):
    config: ModelConfig
    scheme: base.PositionalScheme
    layer: int

    @nn.compact
    def __call__(self, x_BxLxD, pos_BxL, mask_BxLxL):
        cfg = self.config
        h = RMSNorm(dtype=cfg.dtype, name="attn_norm")(x_BxLxD)
        x_BxLxD = x_BxLxD + Attention(cfg, self.scheme, self.layer, name="attn")(
            h, pos_BxL, mask_BxLxL
        )

        h = RMSNorm(dtype=cfg.dtype, name="mlp_norm")(x_BxLxD)
        h = nn.Dense(cfg.mlp_ratio * cfg.d_model, dtype=cfg.dtype, name="mlp_in")(h)
        h = nn.gelu(h)
        return x_BxLxD + nn.Dense(cfg.d_model, dtype=cfg.dtype, name="mlp_out")(h)


class Decoder(nn.Module):
    """``(tokens_BxL, pos_BxL[, segment_BxL]) -> float32 logits_BxLxV``."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.scheme = schemes.build(cfg.pe, cfg.dims, cfg.pe_config)
        self.embed = nn.Embed(
            cfg.vocab_size, cfg.d_model, embedding_init=nn.initializers.normal(1.0)
        )
        self.blocks = [
            Block(cfg, self.scheme, layer, name=f"block_{layer}")
            for layer in range(cfg.num_layers)
        ]
        self.final_norm = RMSNorm(dtype=cfg.dtype)
        self.head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.dtype)

    def __call__(self, tokens_BxL, pos_BxL, segment_BxL=None):
        if tokens_BxL.shape != pos_BxL.shape:
            raise ValueError(
                f"tokens {tokens_BxL.shape} and positions {pos_BxL.shape} differ in shape"
            )
        base.check_positions(pos_BxL)
        x_BxLxD = self.embed(tokens_BxL).astype(jnp.float32)
        code_BxLxD = self.scheme.embed(pos_BxL)
        if code_BxLxD is not None:
            x_BxLxD = x_BxLxD + code_BxLxD.astype(jnp.float32)
        x_BxLxD = x_BxLxD.astype(self.config.dtype)

        mask_BxLxL = causal_mask(pos_BxL, pos_BxL, segment_BxL)
        for block in self.blocks:
            x_BxLxD = block(x_BxLxD, pos_BxL, mask_BxLxL)
        x_BxLxD = self.final_norm(x_BxLxD)
        return self.head(x_BxLxD).astype(jnp.float32)


def check_length(config: ModelConfig, max_position: int) -> None:
    """Raise ValueError if the scheme of ``config`` cannot encode ``max_position``."""
    schemes.build(config.pe, config.dims, config.pe_config).check_length(max_position)
