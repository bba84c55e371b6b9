"""xPos: RoPE with an exponential, relative decay (Sun et al. 2022, "A
Length-Extrapolatable Transformer", arXiv 2212.10554).

Axis legend: B batch, L query positions, K key positions, H heads, Dh head width,
Dr rotated width, Dr2 = Dr / 2 rotary pairs.

q and k are first rotated exactly as RoPE does (``rope.py``: same frequencies, layout and
partial-rotary fraction). Then rotary pair ``k`` of a query at position ``n`` is multiplied
by ``zeta_k^(+n/B)`` and that of a key at position ``m`` by ``zeta_k^(-m/B)``, with

    zeta_k = (2k/Dr + 0.4) / 1.4,   k = 0 .. Dr/2 - 1,   B = xpos_scale_base (512).

Every ``zeta_k`` is below 1, so pair ``k`` of the score carries ``zeta_k^((n-m)/B)``: a
decay with the query-minus-key distance that depends on ``n - m`` only. Putting the
growing factor on the key instead makes attention grow with distance (the usual bug).

Centre. ``zeta^(-m/B)`` overflows float32 for large ``m`` (and ``zeta^(+n/B)``
underflows), so the exponent uses centred positions ``p - c`` with one fixed centre
``c = max_len // 2`` (``ModelDims.max_len``: the training length). Because q and k subtract
the same ``c``, the factor ``zeta^((n-c)/B) zeta^(-(m-c)/B)`` is ``zeta^((n-m)/B)`` and
scores are unchanged; only the magnitude of the rotated q and k is kept near 1 around the
trained positions. The centre is a constant of the model, never derived from the current
sequence, so a decode step with a KV cache scales every key exactly as the full forward
did. (x-transformers and torchscale centre on half the current length instead, which
moves as a cache grows; torchscale threads a cache offset through to keep q and k in step.)
The rotation angles use the plain positions.

Precision and range. Angles and scales are float32 from integer positions; the product is
cast back to the compute dtype. bfloat16 shares float32's exponent range, so it is safe;
float16 (largest value 65504) overflows once ``zeta_0^(-(m-c)/B)`` times ``|k|`` passes it,
i.e. from roughly ``m - c > 4500`` with B = 512 and unit-size keys: a known limit of float16,
not handled here. float32 has the same limit further out: the two factors are applied to q
and k separately, so ``zeta_0^(-(m-c)/B)`` overflows and ``zeta_0^(+(n-c)/B)`` underflows once
``|p - c|`` passes about 36,000 (B = 512), although their product would be representable.
Positions that far from the training length are outside what this library evaluates.

Layout: ``half`` (the default, as in our RoPE) or ``interleaved`` (torchscale's layout); the
per-pair factors are laid out like the cosines. Unlike torchscale, the scaling is applied
only to the rotated dims of a partial rotary (the pass-through dims keep scale 1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pe_jax import scaling
from pe_jax.schemes import base, rope

GAMMA = 0.4  # the paper's gamma: zeta_k = (2k/Dr + gamma) / (1 + gamma)


@dataclasses.dataclass(frozen=True)
class XposOptions:
    rope: rope.RopeOptions = rope.RopeOptions()
    scale_base: float = 512.0

    def __post_init__(self):
        if not self.scale_base > 0.0:
            raise ValueError(f"xpos_scale_base must be > 0, got {self.scale_base}")
        if self.rope.scaling.rope_type != "default":
            raise ValueError(
                "xpos applies plain RoPE frequencies; rope_scaling is not supported, got "
                f"rope_type {self.rope.scaling.rope_type!r}"
            )


def zeta(rotary_dim: int) -> jax.Array:
    """Per-pair decay bases ``zeta_Dr2``: ``(2k/Dr + 0.4) / 1.4``, float64 rounded to float32."""
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"xPos needs an even, positive rotary width, got {rotary_dim}")
    k = np.arange(rotary_dim // 2, dtype=np.float64)
    return jnp.asarray(((2.0 * k / rotary_dim + GAMMA) / (1.0 + GAMMA)).astype(np.float32))


def scale(
    pos_BxL: jax.Array,
    zeta_Dr2: jax.Array,
    scale_base: float,
    centre: int,
    layout: str,
    sign: int,
) -> jax.Array:
    """float32 ``zeta^(sign (p - centre) / scale_base)`` as ``BxLx1xDr``, laid out as ``layout``.

    ``sign = +1`` for queries, ``-1`` for keys.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 (queries) or -1 (keys), got {sign}")
    offset_BxL = (pos_BxL - jnp.asarray(centre, pos_BxL.dtype)).astype(jnp.float32)
    exponent_BxL = (sign / scale_base) * offset_BxL
    scale_BxLxDr2 = jnp.power(zeta_Dr2.astype(jnp.float32), exponent_BxL[..., None])
    if layout == "half":
        scale_BxLxDr = jnp.concatenate([scale_BxLxDr2, scale_BxLxDr2], axis=-1)
    else:
        scale_BxLxDr = jnp.repeat(scale_BxLxDr2, 2, axis=-1)
    return scale_BxLxDr[:, :, None, :]


class Xpos(base.PositionalScheme):
    enters_at = ("rotate",)

    def _opts(self) -> XposOptions:
        return self.options or XposOptions()

    @property
    def centre(self) -> int:
        """The fixed exponent centre, half the training length (see the module docstring)."""
        return self.dims.max_len // 2

    def rotate(self, q_BxLxHxDh, k_BxKxHxDh, q_pos_BxL, k_pos_BxK):
        base.check_positions(q_pos_BxL, "query positions")
        base.check_positions(k_pos_BxK, "key positions")
        opts = self._opts()
        layout = opts.rope.layout
        d_rot = rope.rotary_dim(self.dims.head_dim, opts.rope.fraction)
        inv_freq_Dr2 = scaling.default_inv_freq(d_rot, opts.rope.theta)
        zeta_Dr2 = zeta(d_rot)

        table_dtype = opts.rope.table_dtype

        def tables():
            # Scaling cos and sin scales the rotated vector (pass-through dims stay as is).
            q_cos, q_sin = rope.cos_sin(q_pos_BxL, inv_freq_Dr2, layout, 1.0, table_dtype)
            k_cos, k_sin = rope.cos_sin(k_pos_BxK, inv_freq_Dr2, layout, 1.0, table_dtype)
            q_scale = scale(q_pos_BxL, zeta_Dr2, opts.scale_base, self.centre, layout, +1)
            k_scale = scale(k_pos_BxK, zeta_Dr2, opts.scale_base, self.centre, layout, -1)
            return (q_cos * q_scale, q_sin * q_scale), (k_cos * k_scale, k_sin * k_scale)

        (q_cos, q_sin), (k_cos, k_sin) = rope.computed_once(tables, k_pos_BxK)
        return (rope.apply(q_BxLxHxDh, q_cos, q_sin, layout),
                rope.apply(k_BxKxHxDh, k_cos, k_sin, layout))


def _options(config) -> XposOptions:
    return XposOptions(
        rope=rope.options_from_config(config),
        scale_base=float(base.config_get(config, "xpos_scale_base", 512.0)),
    )


base.register("xpos", Xpos, _options, summary="RoPE with a relative exponential decay of q.k")
