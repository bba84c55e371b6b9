"""A small decoder-only transformer whose positional scheme is a plug-in.

Axis legend: B batch, L query positions, K key positions, H heads, D model width,
Dh head width, F MLP width, V vocabulary.

Pre-RMSNorm blocks, causal attention, GELU MLP, untied output head. Positions are an
explicit integer argument; the attention layer asks the scheme for its hooks and never
branches on the scheme's name. Parameters are float32; activations run in
``compute_dtype``; softmax and the output logits are float32.

Sharding: every parameter of the decoder carries logical axis names (``vocab``,
``embed``, ``qkv``, ``heads``, ``kv``, ``mlp``, ``norm``) and activations are
constrained at block boundaries (``activation_*`` names). ``pe_jax/sharding.py`` maps
the names onto the device mesh; without its rules in effect the constraints do nothing.
The schemes' own parameters carry no names and are replicated. ``init`` therefore
returns boxed parameters; ``nn.unbox`` gives plain arrays (``apply`` takes either).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pe_jax import attention, ops, schemes
from pe_jax.schemes import base

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Logical names of activations (mapped to mesh axes by pe_jax/sharding.py's rules).
ACT_BxL = ("activation_batch", "activation_length")
ACT_BxLxD = ("activation_batch", "activation_length", "activation_embed")
ACT_BxLxHxDh = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
ACT_BxHxLxK = ("activation_batch", "activation_heads", "activation_length",
               "activation_kv_length")
ACT_BxLxF = ("activation_batch", "activation_length", "activation_mlp")
ACT_BxLxV = ("activation_batch", "activation_length", "activation_vocab")

_KERNEL_INIT = nn.initializers.lecun_normal()  # Flax's Dense default

# Dense attention takes the queries in this many blocks, each skipping the key blocks
# after it (``attend_causal_blocks``); exact, and about a quarter less attention work.
QUERY_BLOCKS = 2


class _LogicalNames(nn.LogicallyPartitioned):
    """``nn.LogicallyPartitioned`` that constrains only a value of the named rank.

    ``DenseGeneral`` initialises a flat 2-D kernel and reshapes it, and Flax reruns the
    initializer (under ``eval_shape``) on every ``apply`` to check shapes; with a mesh in
    effect the stock box would constrain that flat value with all four names and fail.
    The flat value is unboxed as it is; the reshaped kernel keeps its names.
    """

    def unbox(self, apply_constraint=True):
        if jnp.ndim(self.value) != len(self.names):
            return self.value
        return super().unbox(apply_constraint)


def _named(init, names: tuple[str, ...]):
    """``init`` whose parameter carries the logical axis ``names``."""

    def named_init(*args, **kwargs):
        return _LogicalNames(init(*args, **kwargs), names)

    return named_init


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
        scale_D = self.param("scale", _named(nn.initializers.ones, ("norm",)),
                             (x_BxLxD.shape[-1],))
        x32 = x_BxLxD.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale_D).astype(self.dtype)


def lexicographic_leq(a_Ax: jax.Array, b_Ax: jax.Array) -> jax.Array:
    """``a <= b`` in lexicographic order over the leading axis (broadcasting the rest).

    M-RoPE's ``(t, h, w)`` ids (``schemes.mrope.position_ids``) increase in this order
    along the sequence: text runs on every axis, an image block row-major over its grid,
    the text after it from one past the largest id. So the order is the token order, and
    the causal mask needs no other array.
    """
    result = a_Ax[-1] <= b_Ax[-1]
    for axis in range(a_Ax.shape[0] - 2, -1, -1):
        result = (a_Ax[axis] < b_Ax[axis]) | ((a_Ax[axis] == b_Ax[axis]) & result)
    return result


def causal_mask(q_pos_BxL: jax.Array, k_pos_BxK: jax.Array, segment_BxL=None, k_segment_BxK=None):
    """``True`` where query ``i`` may attend to key ``j``: ``pos_j <= pos_i``.

    Built from positions, so it also serves cached decoding (a key slot not yet written
    carries a position past every query) and sorted randomized positions. Packed rows
    pass segment ids, and keys of another segment are hidden.
    """
    if q_pos_BxL.ndim == 3:  # (t, h, w) ids of M-RoPE: ordered lexicographically
        mask_BxLxK = lexicographic_leq(k_pos_BxK[:, :, None, :], q_pos_BxL[:, :, :, None])
    else:
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
        if bias.shape == logits_BxHxLxK.shape:  # split along batch and heads
            bias = nn.with_logical_constraint(bias, ACT_BxHxLxK)
        logits_BxHxLxK = logits_BxHxLxK + bias
    logits_BxHxLxK = scheme.logits(
        logits_BxHxLxK, q_BxLxHxDh, k_BxKxHxDh, q_pos_BxL, k_pos_BxK, mask_BxLxK, layer
    )
    logits_BxHxLxK = nn.with_logical_constraint(logits_BxHxLxK, ACT_BxHxLxK)

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


def attend_causal_blocks(
    q_BxLxHxDh: jax.Array,
    k_BxKxHxDh: jax.Array,
    v_BxKxHxDh: jax.Array,
    pos_BxL: jax.Array,
    mask_BxLxK: jax.Array,
    scheme: base.PositionalScheme,
    layer: int | jax.Array,
    num_blocks: int,
) -> jax.Array:
    """``attend`` with the queries in ``num_blocks`` blocks, each seeing only the keys up
    to its own end: the key blocks after it hold future keys only, so skipping them
    changes nothing but the work (about ``(n - 1) / 2n`` of the scores and softmax).

    Needs positions that do not decrease along the sequence within a segment (training
    windows, sorted random positions and packed rows all qualify; blockwise attention
    makes the same assumption).
    """
    length = q_BxLxHxDh.shape[1]
    size = length // num_blocks
    outs = []
    for i in range(num_blocks):
        q_slice, k_end = slice(i * size, (i + 1) * size), (i + 1) * size
        outs.append(attend(
            q_BxLxHxDh[:, q_slice], k_BxKxHxDh[:, :k_end], v_BxKxHxDh[:, :k_end],
            pos_BxL[..., q_slice], pos_BxL[..., :k_end], mask_BxLxK[:, q_slice, :k_end],
            scheme, layer,
        ))
    return jnp.concatenate(outs, axis=1)


def causal_blocks(length: int, wanted: int) -> int:
    """The number of query blocks to use for ``length`` (1: plain dense attention)."""
    if wanted > 1 and length % wanted == 0 and length // wanted >= 32:
        return wanted
    return 1


class Attention(nn.Module):
    """Self-attention with the scheme's hooks, in one of three modes.

    - dense (default): the whole ``L x L`` logits, for training;
    - ``block_size > 0``: blockwise with an online softmax, for long evaluation;
    - ``decode=True``: a preallocated KV cache (collection ``"cache"``, made by
      ``init_cache``). Each call writes its keys, already rotated at their true
      positions, at the cache index and attends over every filled slot.
    """

    config: ModelConfig
    scheme: base.PositionalScheme
    layer: int

    @nn.compact
    def __call__(self, x_BxLxD, pos_BxL, mask_BxLxL, block_size: int = 0, decode: bool = False):
        cfg = self.config
        qkv_BxLx3xHxDh = nn.DenseGeneral(
            (3, cfg.num_heads, cfg.head_dim), use_bias=False, dtype=cfg.dtype, name="qkv",
            dot_general=ops.flat_dot_general,
            kernel_init=_named(_KERNEL_INIT, ("embed", "qkv", "heads", "kv")),
        )(x_BxLxD)
        q, k, v = (
            nn.with_logical_constraint(qkv_BxLx3xHxDh[:, :, i], ACT_BxLxHxDh) for i in range(3)
        )
        q, k = self.scheme.rotate(q, k, pos_BxL, pos_BxL)

        if decode:
            out_BxLxHxDh = self._cached(q, k, v, pos_BxL)
        elif block_size:
            hooks = attention.Hooks.from_scheme(self.scheme, self.layer)
            out_BxLxHxDh = attention.blockwise_attend(q, k, v, pos_BxL, pos_BxL, hooks, block_size)
        elif causal_blocks(q.shape[1], QUERY_BLOCKS) > 1:
            out_BxLxHxDh = attend_causal_blocks(
                q, k, v, pos_BxL, mask_BxLxL, self.scheme, self.layer,
                causal_blocks(q.shape[1], QUERY_BLOCKS),
            )
        else:
            out_BxLxHxDh = attend(q, k, v, pos_BxL, pos_BxL, mask_BxLxL, self.scheme, self.layer)
        out_BxLxHxDh = nn.with_logical_constraint(out_BxLxHxDh, ACT_BxLxHxDh)
        return nn.DenseGeneral(
            cfg.d_model, axis=(-2, -1), use_bias=False, dtype=cfg.dtype, name="out",
            dot_general=ops.flat_dot_general,
            kernel_init=_named(_KERNEL_INIT, ("heads", "kv", "embed")),
        )(out_BxLxHxDh)

    def _cached(self, q, k, v, pos_BxL):
        if not self.has_variable("cache", "k"):
            raise ValueError(
                "decode=True needs a KV cache: pass {'cache': model.init_cache(...)} with "
                "the parameters and make 'cache' mutable"
            )
        cache = {name: self.variable("cache", name) for name in ("k", "v", "pos", "index")}
        written = attention.write_cache(
            {n: cache[n].value for n in ("k", "v", "pos")}, cache["index"].value, k, v, pos_BxL
        )
        for name, value in written.items():
            cache[name].value = value
        cache["index"].value = cache["index"].value + k.shape[1]
        mask_BxLxK = causal_mask(pos_BxL, written["pos"])
        return attend(
            q, written["k"], written["v"], pos_BxL, written["pos"], mask_BxLxK, self.scheme,
            self.layer,
        )


class Block(nn.Module):
    config: ModelConfig
    scheme: base.PositionalScheme
    layer: int

    @nn.compact
    def __call__(self, x_BxLxD, pos_BxL, mask_BxLxL, block_size: int = 0, decode: bool = False):
        cfg = self.config
        h = RMSNorm(dtype=cfg.dtype, name="attn_norm")(x_BxLxD)
        x_BxLxD = x_BxLxD + Attention(cfg, self.scheme, self.layer, name="attn")(
            h, pos_BxL, mask_BxLxL, block_size, decode
        )

        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ACT_BxLxD)

        h = RMSNorm(dtype=cfg.dtype, name="mlp_norm")(x_BxLxD)
        h = nn.Dense(
            cfg.mlp_ratio * cfg.d_model, dtype=cfg.dtype, name="mlp_in",
            dot_general=ops.flat_dot_general,
            kernel_init=_named(_KERNEL_INIT, ("embed", "mlp")),
            bias_init=_named(nn.initializers.zeros, ("mlp",)),
        )(h)
        h = nn.with_logical_constraint(nn.gelu(h), ACT_BxLxF)
        h = nn.Dense(
            cfg.d_model, dtype=cfg.dtype, name="mlp_out",
            dot_general=ops.flat_dot_general,
            kernel_init=_named(_KERNEL_INIT, ("mlp", "embed")),
            bias_init=_named(nn.initializers.zeros, ("embed",)),
        )(h)
        return nn.with_logical_constraint(x_BxLxD + h, ACT_BxLxD)


class Decoder(nn.Module):
    """``(tokens_BxL, pos_BxL[, segment_BxL]) -> float32 logits_BxLxV``.

    ``block_size > 0`` evaluates attention blockwise (long sequences, bounded memory);
    ``decode=True`` runs on the KV cache (see ``pe_jax.decode``).
    """

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.scheme = schemes.build(cfg.pe, cfg.dims, cfg.pe_config)
        self.embed = nn.Embed(
            cfg.vocab_size, cfg.d_model,
            embedding_init=_named(nn.initializers.normal(1.0), ("vocab", "embed")),
        )
        self.blocks = [
            Block(cfg, self.scheme, layer, name=f"block_{layer}")
            for layer in range(cfg.num_layers)
        ]
        self.final_norm = RMSNorm(dtype=cfg.dtype)
        # Inputs in the compute dtype, products accumulated and returned in float32: the
        # logits reach the float32 softmax and loss without a bf16 rounding.
        self.head = nn.Dense(
            cfg.vocab_size, use_bias=False, dtype=cfg.dtype,
            kernel_init=_named(_KERNEL_INIT, ("embed", "vocab")),
            dot_general=functools.partial(ops.flat_dot_general,
                                          preferred_element_type=jnp.float32),
        )

    def __call__(self, tokens_BxL, pos_BxL, segment_BxL=None, *, block_size: int = 0,
                 decode: bool = False):
        axes = self.scheme.position_axes
        if axes > 1 and pos_BxL.ndim == 3:  # M-RoPE's (t, h, w) ids: 3xBxL
            _check_axis_positions(self.config, axes, tokens_BxL, pos_BxL, block_size, decode)
        else:
            if pos_BxL.shape not in (tokens_BxL.shape, (1, tokens_BxL.shape[1])):
                raise ValueError(
                    f"positions {pos_BxL.shape} must have the shape of the tokens "
                    f"{tokens_BxL.shape} or (1, {tokens_BxL.shape[1]}) (shared by every row)"
                    + (f", or ({axes}, batch, length) for {self.config.pe}" if axes > 1 else "")
                )
            base.check_positions(pos_BxL)
        if pos_BxL.shape == tokens_BxL.shape:
            pos_BxL = nn.with_logical_constraint(pos_BxL, ACT_BxL)
        # The lookup gathers whole rows of a replicated table, so its output is split by
        # batch like the tokens (a gather from a table split along vocab or embed makes
        # XLA replicate and re-split the result).
        table_VxD = nn.with_logical_constraint(self.embed.embedding, (None, None))
        x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0).astype(jnp.float32)
        code_BxLxD = self.scheme.embed(pos_BxL)
        if code_BxLxD is not None:
            x_BxLxD = x_BxLxD + code_BxLxD.astype(jnp.float32)
        x_BxLxD = nn.with_logical_constraint(x_BxLxD.astype(self.config.dtype), ACT_BxLxD)

        if (block_size or decode) and segment_BxL is not None:
            raise ValueError("segment ids are supported by dense attention only")
        # Blockwise attention builds its masks per block: no L x L array at all.
        mask_BxLxL = None if block_size or decode else causal_mask(pos_BxL, pos_BxL, segment_BxL)
        for block in self.blocks:
            # The residual stream entering each block, and leaving the last one: kept only
            # when the caller makes "intermediates" mutable (the depth probe), else free.
            self.sow("intermediates", "residual", x_BxLxD)
            x_BxLxD = block(x_BxLxD, pos_BxL, mask_BxLxL, block_size, decode)
        self.sow("intermediates", "residual", x_BxLxD)
        x_BxLxD = self.final_norm(x_BxLxD)
        return nn.with_logical_constraint(self.head(x_BxLxD).astype(jnp.float32), ACT_BxLxV)


def _check_axis_positions(config, axes, tokens_BxL, pos_AxBxL, block_size, decode):
    batch, length = tokens_BxL.shape
    if pos_AxBxL.shape not in ((axes, batch, length), (axes, 1, length)):
        raise ValueError(
            f"{config.pe} positions {pos_AxBxL.shape} must have shape ({axes}, {batch}, "
            f"{length}) or ({axes}, 1, {length}) for tokens {tokens_BxL.shape}"
        )
    if not jnp.issubdtype(pos_AxBxL.dtype, jnp.integer):
        raise ValueError(f"positions must be an integer array, got dtype {pos_AxBxL.dtype}")
    if block_size or decode:
        raise ValueError(
            f"{axes}-axis positions {pos_AxBxL.shape} are supported by dense attention only "
            f"(block_size={block_size}, decode={decode}); decode text with (batch, length) "
            "positions"
        )


def init_cache(config: ModelConfig, batch: int, max_len: int) -> dict:
    """An empty KV cache for ``Decoder(config)`` in decode mode, ``max_len`` slots."""
    per_layer = {
        **attention.init_cache(batch, max_len, config.num_heads, config.head_dim, config.dtype),
        "index": jnp.zeros((), jnp.int32),
    }
    return {f"block_{i}": {"attn": dict(per_layer)} for i in range(config.num_layers)}


def check_length(config: ModelConfig, max_position: int) -> None:
    """Raise ValueError if the scheme of ``config`` cannot encode ``max_position``."""
    schemes.build(config.pe, config.dims, config.pe_config).check_length(max_position)
