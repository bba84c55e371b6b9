"""Blockwise causal attention for long evaluation, and the KV cache for decoding.

Axis legend: B batch, L query positions, K key positions, H heads, Dh head width,
Q query-block length, C key-block length.

``blockwise_attend`` never materialises an ``L x K`` array: queries are taken in blocks
of ``Q``, keys in blocks of ``C``, with an online softmax (running max, running
denominator, rescaled accumulator). Each scheme's bias, logit and value hooks are
called per block with the positions of that block, so one implementation of a hook
serves dense, blockwise and cached attention alike.

The hooks arrive as pure functions (``Hooks``), not as module methods, so that they can
run inside ``lax`` loops: ``Hooks.from_scheme`` closes a bound scheme's variables over
an unbound copy of it.

Contracts the blockwise path relies on, both true of evaluation windows:
- positions do not decrease along the sequence (so key blocks after the query block
  hold only future keys and are skipped);
- a scheme's ``values`` hook is linear in the probabilities it is given (the online
  softmax hands it unnormalised, rescaled block probabilities).
A scheme whose logit term couples all keys of a row (CoPE counts gates from each key up
to the query) sets ``key_blocks_independent = False``; it is then evaluated with one key
block spanning the whole row, which keeps memory at ``Q x K`` instead of ``L x K``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

_NEG = -1e30  # masked logit; finite, so exp(_NEG - m) is exactly 0 without NaNs
PAD_POSITION = 2**30  # position of an empty cache slot or a padding key: never visible


@dataclasses.dataclass(frozen=True)
class Hooks:
    """A scheme's attention hooks as pure functions of arrays."""

    bias: Callable[..., Any]
    logits: Callable[..., Any]
    values: Callable[..., Any]
    key_blocks_independent: bool = True

    @classmethod
    def from_scheme(cls, scheme, layer) -> "Hooks":
        """Pure-function hooks of a bound scheme module, for use inside lax loops."""
        variables = scheme.variables
        unbound = scheme.clone(parent=None)
        kind = type(unbound)

        def call(method, *args):
            return unbound.apply(variables, *args, method=getattr(kind, method))

        return cls(
            bias=lambda qp, kp: call("bias", qp, kp, layer),
            logits=lambda s, q, k, qp, kp, m: call("logits", s, q, k, qp, kp, m, layer),
            values=lambda p, qp, kp: call("values", p, qp, kp, layer),
            key_blocks_independent=getattr(kind, "key_blocks_independent", True),
        )


def _pad_to(x: jax.Array, length: int, axis: int, value) -> jax.Array:
    pad = length - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def blockwise_attend(
    q_BxLxHxDh: jax.Array,
    k_BxKxHxDh: jax.Array,
    v_BxKxHxDh: jax.Array,
    q_pos_BxL: jax.Array,
    k_pos_BxK: jax.Array,
    hooks: Hooks,
    block_size: int = 512,
) -> jax.Array:
    """Causal attention ``softmax(q k / sqrt(Dh) + hooks) v`` in blocks; float32 math."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    batch, length, heads, head_dim = q_BxLxHxDh.shape
    num_keys = k_BxKxHxDh.shape[1]
    q_block = min(block_size, length)
    k_block = min(block_size, num_keys) if hooks.key_blocks_independent else num_keys
    num_q_blocks = -(-length // q_block)
    num_k_blocks = -(-num_keys // k_block)

    # Pad to whole blocks: padded keys sit at an invisible position, padded queries are
    # computed and dropped.
    q = _pad_to(q_BxLxHxDh, num_q_blocks * q_block, 1, 0)
    q_pos = _pad_to(q_pos_BxL, num_q_blocks * q_block, 1, PAD_POSITION)
    k = _pad_to(k_BxKxHxDh, num_k_blocks * k_block, 1, 0)
    v = _pad_to(v_BxKxHxDh, num_k_blocks * k_block, 1, 0)
    k_pos = _pad_to(k_pos_BxK, num_k_blocks * k_block, 1, PAD_POSITION)
    scale = head_dim**-0.5

    def one_query_block(qi):
        q_blk = jax.lax.dynamic_slice_in_dim(q, qi * q_block, q_block, axis=1)
        qp_blk = jax.lax.dynamic_slice_in_dim(q_pos, qi * q_block, q_block, axis=1)

        def step(ki, carry):
            m_BxHxQ, l_BxHxQ, acc_BxQxHxDh = carry
            k_blk = jax.lax.dynamic_slice_in_dim(k, ki * k_block, k_block, axis=1)
            v_blk = jax.lax.dynamic_slice_in_dim(v, ki * k_block, k_block, axis=1)
            kp_blk = jax.lax.dynamic_slice_in_dim(k_pos, ki * k_block, k_block, axis=1)
            mask_BxQxC = kp_blk[:, None, :] <= qp_blk[:, :, None]

            s_BxHxQxC = jnp.einsum(
                "bqhd,bchd->bhqc", q_blk, k_blk, preferred_element_type=jnp.float32
            ) * scale
            bias = hooks.bias(qp_blk, kp_blk)
            if bias is not None:
                s_BxHxQxC = s_BxHxQxC + bias
            s_BxHxQxC = hooks.logits(s_BxHxQxC, q_blk, k_blk, qp_blk, kp_blk, mask_BxQxC)
            s_BxHxQxC = jnp.where(mask_BxQxC[:, None], s_BxHxQxC, _NEG)

            m_new = jnp.maximum(m_BxHxQ, jnp.max(s_BxHxQxC, axis=-1))
            p_BxHxQxC = jnp.exp(s_BxHxQxC - m_new[..., None]) * mask_BxQxC[:, None]
            correction = jnp.exp(m_BxHxQ - m_new)
            l_new = l_BxHxQ * correction + jnp.sum(p_BxHxQxC, axis=-1)
            out = jnp.einsum("bhqc,bchd->bqhd", p_BxHxQxC, v_blk.astype(jnp.float32))
            extra = hooks.values(p_BxHxQxC, qp_blk, kp_blk)
            if extra is not None:
                out = out + extra.astype(jnp.float32)
            corr_BxQxHx1 = jnp.moveaxis(correction, 1, 2)[..., None]
            return m_new, l_new, acc_BxQxHxDh * corr_BxQxHx1 + out

        init = (
            jnp.full((batch, heads, q_block), _NEG, jnp.float32),
            jnp.zeros((batch, heads, q_block), jnp.float32),
            jnp.zeros((batch, q_block, heads, head_dim), jnp.float32),
        )
        # Key blocks that start after this query block's last query are all future keys.
        last = jnp.minimum(((qi + 1) * q_block - 1) // k_block + 1, num_k_blocks)
        _, l_BxHxQ, acc = jax.lax.fori_loop(0, last, step, init)
        denom = jnp.maximum(jnp.moveaxis(l_BxHxQ, 1, 2)[..., None], 1e-30)
        return (acc / denom).astype(q_BxLxHxDh.dtype)

    out_NxBxQxHxDh = jax.lax.map(one_query_block, jnp.arange(num_q_blocks))
    out = jnp.moveaxis(out_NxBxQxHxDh, 0, 1).reshape(batch, -1, heads, head_dim)
    return out[:, :length]


# --- KV cache -----------------------------------------------------------------------


def init_cache(batch: int, max_len: int, heads: int, head_dim: int, dtype) -> dict:
    """An empty cache: zero keys and values, every slot at an invisible position."""
    return {
        "k": jnp.zeros((batch, max_len, heads, head_dim), dtype),
        "v": jnp.zeros((batch, max_len, heads, head_dim), dtype),
        "pos": jnp.full((batch, max_len), PAD_POSITION, jnp.int32),
    }


def write_cache(cache: dict, index: jax.Array, k_new, v_new, pos_new) -> dict:
    """Write ``S`` new (already rotated) keys, values and positions at slot ``index``."""
    return {
        "k": jax.lax.dynamic_update_slice_in_dim(cache["k"], k_new.astype(cache["k"].dtype),
                                                 index, axis=1),
        "v": jax.lax.dynamic_update_slice_in_dim(cache["v"], v_new.astype(cache["v"].dtype),
                                                 index, axis=1),
        "pos": jax.lax.dynamic_update_slice_in_dim(cache["pos"], pos_new.astype(jnp.int32),
                                                   index, axis=1),
    }
