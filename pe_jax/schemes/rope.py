"""Rotary position embedding (Su et al. 2021, RoFormer, arXiv 2104.09864).

Each pair of head dimensions ``(a, b)`` with frequency ``w_k = theta^(-2k/d)`` is
rotated by the angle ``p w_k`` of its token's position ``p``:
``a' = a cos - b sin``, ``b' = b cos + a sin``. Then ``<R(m) q, R(n) k>`` depends on
``m - n`` only.

Two layouts pair the dimensions differently (REFERENCE.md section 3):
- ``half`` (GPT-NeoX, Hugging Face Llama): pair ``(x[k], x[k + d/2])``;
- ``interleaved`` (GPT-J, Meta's Llama reference, x-transformers): pair
  ``(x[2k], x[2k+1])``.
They differ by a fixed permutation of head dimensions; ``half_to_interleaved`` and
``interleaved_to_half`` move q/k projection weights between them.

Partial rotary (GPT-J, GPT-NeoX) rotates the first ``d_rot = head_dim * fraction``
dimensions, with frequencies computed over ``d_rot`` as Hugging Face does, and passes
the rest through.

Angles, cosines and sines are always float32 from integer positions; the rotation is
done in float32 and only its result is cast back to the compute dtype.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from pe_jax import scaling
from pe_jax.schemes import base

LAYOUTS = ("half", "interleaved")
TABLE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class RopeOptions:
    theta: float = 10000.0
    layout: str = "half"
    fraction: float = 1.0
    scaling: scaling.RopeScaling = scaling.RopeScaling()
    # "float32" (always, in practice). "bfloat16" reproduces a fault other code has
    # shipped, for the report's precision experiment: positions, angles, cos and sin
    # all built in bfloat16 (see pe_jax/precision.py).
    table_dtype: str = "float32"

    def __post_init__(self):
        if self.table_dtype not in TABLE_DTYPES:
            raise ValueError(
                f"pe_table_dtype must be one of {TABLE_DTYPES}, got {self.table_dtype!r}"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"rope_layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"rope_fraction must be in (0, 1], got {self.fraction}")
        if not self.theta > 1.0:
            raise ValueError(f"rope_theta must be > 1, got {self.theta}")


def rotary_dim(head_dim: int, fraction: float = 1.0) -> int:
    """Number of rotated dimensions; must be even and positive."""
    d_rot = int(head_dim * fraction)
    if d_rot <= 0 or d_rot % 2:
        raise ValueError(
            f"RoPE needs an even, positive number of rotated dimensions; head_dim "
            f"{head_dim} with rope_fraction {fraction} gives {d_rot}"
        )
    return d_rot


def cos_sin(
    pos_BxL: jax.Array, inv_freq_K: jax.Array, layout: str, attention_factor=1.0,
    table_dtype: str = "float32",
) -> tuple[jax.Array, jax.Array]:
    """float32 cos and sin ``BxLx1xd`` laid out to match ``layout``.

    ``table_dtype="bfloat16"`` builds them in bfloat16 instead (the fault the precision
    experiment measures) and returns them widened to float32.
    """
    dtype = jnp.dtype(table_dtype)
    angle_BxLxK = pos_BxL.astype(dtype)[..., None] * inv_freq_K.astype(dtype)
    if layout == "half":
        angle_BxLxd = jnp.concatenate([angle_BxLxK, angle_BxLxK], axis=-1)
    else:
        angle_BxLxd = jnp.repeat(angle_BxLxK, 2, axis=-1)
    cos = jnp.cos(angle_BxLxd).astype(jnp.float32) * attention_factor
    sin = jnp.sin(angle_BxLxd).astype(jnp.float32) * attention_factor
    return cos[:, :, None, :], sin[:, :, None, :]


def computed_once(tables, pos: jax.Array):
    """``tables()``, computed once and stored.

    A conditional is a fusion boundary for XLA, which would otherwise recompute cos and
    sin inside every consumer, for every head (measured on CPU: RoPE's step overhead 7% ->
    3%; ``optimization_barrier`` does not help there, XLA's CPU pipeline strips it). The
    predicate is always true (positions are never below -1) but not known to be.
    """
    return jax.lax.cond(jnp.min(pos) > -1, tables, tables)


def _rotate_pairs(x: jax.Array, layout: str) -> jax.Array:
    """The partner of every dimension, with the sign of a +90 degree rotation."""
    if layout == "half":
        x1, x2 = jnp.split(x, 2, axis=-1)
        return jnp.concatenate([-x2, x1], axis=-1)
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    return jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array, layout: str) -> jax.Array:
    """``x cos + pairs(x) sin``: each pair turned by its angle.

    The gradient is the same turn by the opposite angle (a rotation's transpose is its
    inverse), one elementwise pass, where autodiff of the slices and concatenations of
    ``_rotate_pairs`` would add several.
    """
    return x * cos + _rotate_pairs(x, layout) * sin


def _rotate_fwd(x, cos, sin, layout):
    return _rotate(x, cos, sin, layout), (x, cos, sin)


def _sum_to(t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The cotangent of an operand of ``shape`` that was broadcast to ``t.shape``."""
    t = jnp.sum(t, axis=tuple(range(t.ndim - len(shape))))
    axes = tuple(i for i, (a, b) in enumerate(zip(t.shape, shape)) if b == 1 and a != 1)
    return jnp.sum(t, axis=axes, keepdims=True) if axes else t


def _rotate_bwd(layout, saved, g):
    x, cos, sin = saved
    g_x = g * cos - _rotate_pairs(g, layout) * sin  # sin is equal within a pair
    return (
        _sum_to(g_x, x.shape),
        _sum_to(g * x, cos.shape),
        _sum_to(g * _rotate_pairs(x, layout), sin.shape),
    )


_rotate.defvjp(_rotate_fwd, _rotate_bwd)


def apply(x_BxLxHxDh: jax.Array, cos: jax.Array, sin: jax.Array, layout: str) -> jax.Array:
    """Rotate the first ``cos.shape[-1]`` dims of ``x`` in float32; cast back."""
    d_rot = cos.shape[-1]
    x32 = x_BxLxHxDh.astype(jnp.float32)
    if d_rot == x32.shape[-1]:
        return _rotate(x32, cos, sin, layout).astype(x_BxLxHxDh.dtype)
    x_rot, x_pass = x32[..., :d_rot], x32[..., d_rot:]
    out = _rotate(x_rot, cos, sin, layout)
    return jnp.concatenate([out, x_pass], axis=-1).astype(x_BxLxHxDh.dtype)


def half_to_interleaved(d_rot: int) -> np.ndarray:
    """Permutation ``perm`` with ``x_interleaved = x_half[..., perm]`` (rotated part)."""
    half = d_rot // 2
    return np.stack([np.arange(half), np.arange(half) + half], axis=-1).reshape(-1)


def interleaved_to_half(d_rot: int) -> np.ndarray:
    """Inverse of ``half_to_interleaved``."""
    return np.argsort(half_to_interleaved(d_rot))


def convert_qk_kernel(kernel: jax.Array, head_dim: int, d_rot: int, to: str) -> jax.Array:
    """Permute the output columns of a q or k projection kernel ``[..., H, Dh]``.

    A model trained with one layout gives identical attention outputs with the other
    layout once its q and k kernels (and biases) are permuted this way.
    """
    if to not in LAYOUTS:
        raise ValueError(f"target layout must be one of {LAYOUTS}, got {to!r}")
    if kernel.shape[-1] != head_dim:
        raise ValueError(f"kernel's last axis {kernel.shape[-1]} is not head_dim {head_dim}")
    perm = half_to_interleaved(d_rot) if to == "interleaved" else interleaved_to_half(d_rot)
    full = np.concatenate([perm, np.arange(d_rot, head_dim)])
    return kernel[..., full]


class Rope(base.PositionalScheme):
    enters_at = ("rotate",)

    def _opts(self) -> RopeOptions:
        return self.options or RopeOptions()

    def rotate(self, q_BxLxHxDh, k_BxKxHxDh, q_pos_BxL, k_pos_BxK):
        base.check_positions(q_pos_BxL, "query positions")
        base.check_positions(k_pos_BxK, "key positions")
        opts = self._opts()
        d_rot = rotary_dim(self.dims.head_dim, opts.fraction)
        # The current length, for methods that depend on it (dynamic NTK, LongRoPE):
        # a pure function of the explicit key positions, never a cached value.
        seq_len = jnp.max(k_pos_BxK) + 1
        inv_freq_K, factor = scaling.inv_freq_and_scale(d_rot, opts.theta, opts.scaling, seq_len)

        def tables():
            return (cos_sin(q_pos_BxL, inv_freq_K, opts.layout, factor, opts.table_dtype),
                    cos_sin(k_pos_BxK, inv_freq_K, opts.layout, factor, opts.table_dtype))

        (q_cos, q_sin), (k_cos, k_sin) = computed_once(tables, k_pos_BxK)
        return apply(q_BxLxHxDh, q_cos, q_sin, opts.layout), apply(
            k_BxKxHxDh, k_cos, k_sin, opts.layout
        )


def options_from_config(config) -> RopeOptions:
    rope_scaling = base.config_get(config, "rope_scaling", None)
    if isinstance(rope_scaling, str):
        import json

        rope_scaling = json.loads(rope_scaling) if rope_scaling.strip() else None
    if rope_scaling is not None and not isinstance(rope_scaling, dict):
        rope_scaling = dict(rope_scaling)
    return RopeOptions(
        theta=float(base.config_get(config, "rope_theta", 10000.0)),
        layout=base.config_get(config, "rope_layout", "half"),
        fraction=float(base.config_get(config, "rope_fraction", 1.0)),
        table_dtype=str(base.config_get(config, "pe_table_dtype", "float32")),
        scaling=scaling.from_hf(
            rope_scaling or None,
            # The context the rules measure against: the training length, unless a
            # fine-tune at a longer seq_len keeps its base model's (rope_max_position_embeddings).
            max_position_embeddings=int(
                base.config_get(config, "rope_max_position_embeddings", 0)
                or base.config_get(config, "seq_len", 0)
            )
            or None,
        ),
    )


base.register("rope", Rope, options_from_config, summary="rotary embedding of q and k")
