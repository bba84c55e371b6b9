"""Fixed sinusoidal absolute encoding (Vaswani et al. 2017, arXiv 1706.03762).

Layout ``interleaved`` is the paper's: ``PE[p, 2k] = sin(p w_k)``, ``PE[p, 2k+1] =
cos(p w_k)`` with ``w_k = base^(-2k/D)``. Layout ``concat`` puts all sines first and
all cosines second, with the same frequencies (the form of DeepMind's randomized
positional encodings code). Angles are formed in float32 from integer positions for any
length; only the finished code is cast to the compute dtype by the caller.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pe_jax.schemes import base

LAYOUTS = ("interleaved", "concat")
TABLE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class SinusoidalOptions:
    base: float = 10000.0
    layout: str = "interleaved"
    table_dtype: str = "float32"  # "bfloat16": the shipped fault, for the precision report

    def __post_init__(self):
        if self.table_dtype not in TABLE_DTYPES:
            raise ValueError(
                f"pe_table_dtype must be one of {TABLE_DTYPES}, got {self.table_dtype!r}"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"sin_layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not self.base > 1.0:
            raise ValueError(f"sin_base must be > 1, got {self.base}")


def frequencies(d_model: int, base: float = 10000.0) -> jax.Array:
    """``w_k = base^(-2k/d_model)`` for ``k = 0 .. d_model/2 - 1``, float32."""
    if d_model % 2:
        raise ValueError(f"sinusoidal encoding needs an even width, got {d_model}")
    exponent_K = jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model
    return (1.0 / base**exponent_K).astype(jnp.float32)


def table(
    pos_BxL: jax.Array, d_model: int, base: float = 10000.0, layout: str = "interleaved",
    table_dtype: str = "float32",
) -> jax.Array:
    """The float32 code ``BxLxD`` for integer positions (built in ``table_dtype``)."""
    dtype = jnp.dtype(table_dtype)
    angle_BxLxK = pos_BxL.astype(dtype)[..., None] * frequencies(d_model, base).astype(dtype)
    sin = jnp.sin(angle_BxLxK).astype(jnp.float32)
    cos = jnp.cos(angle_BxLxK).astype(jnp.float32)
    if layout == "interleaved":
        return jnp.stack([sin, cos], axis=-1).reshape(*pos_BxL.shape, d_model)
    return jnp.concatenate([sin, cos], axis=-1)


class Sinusoidal(base.PositionalScheme):
    enters_at = ("embed",)

    def embed(self, pos_BxL: jax.Array) -> jax.Array:
        base.check_positions(pos_BxL)
        opts = self.options or SinusoidalOptions()
        return table(pos_BxL, self.dims.d_model, opts.base, opts.layout, opts.table_dtype)


def _options(config) -> SinusoidalOptions:
    return SinusoidalOptions(
        base=float(base.config_get(config, "sin_base", 10000.0)),
        layout=base.config_get(config, "sin_layout", "interleaved"),
        table_dtype=str(base.config_get(config, "pe_table_dtype", "float32")),
    )


base.register(
    "sinusoidal", Sinusoidal, _options, summary="fixed sin/cos added to embeddings"
)
