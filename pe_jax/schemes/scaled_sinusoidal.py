"""Fixed sinusoidal code times one learned scalar gain.

Axis legend: B batch, L positions, D model width.

The code is exactly that of ``sinusoidal.py`` (Vaswani et al. 2017, arXiv 1706.03762; same
``sin_base`` and ``sin_layout`` keys); the model learns only how loud it is relative to the
token embeddings. The idea is x-transformers' ``ScaledSinusoidalEmbedding`` (REFERENCE.md
section 1), which initialises the gain to ``D^-0.5``; its code uses the concatenated layout
(``sin_layout = "concat"`` here).

Initial gain. Our token embeddings are drawn with standard deviation 1 and every (sin, cos)
pair of the code has unit norm, so each coordinate of the code already has RMS
``sqrt(1/2) ~ 0.71``: the code is on the scale of the tokens at gain 1. x-transformers'
``D^-0.5`` (0.088 at D = 128) fits its small token embeddings but would make our code ~8
times quieter than in the ``sinusoidal`` scheme, a different starting point rather than the
same model with one more parameter. The default here is therefore 1.0
(``sin_gain_init``; set it to ``d_model ** -0.5`` to follow x-transformers). The gain is a
float32 parameter named ``gain``, shared by all positions and dimensions; under AdamW it is
subject to weight decay like any other parameter.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from pe_jax.schemes import base, sinusoidal


@dataclasses.dataclass(frozen=True)
class ScaledSinusoidalOptions:
    sin: sinusoidal.SinusoidalOptions = sinusoidal.SinusoidalOptions()
    gain_init: float = 1.0

    def __post_init__(self):
        if not math.isfinite(self.gain_init):
            raise ValueError(f"sin_gain_init must be a finite number, got {self.gain_init}")


class ScaledSinusoidal(base.PositionalScheme):
    enters_at = ("embed",)

    def setup(self):
        opts = self.options or ScaledSinusoidalOptions()
        self.gain = self.param("gain", nn.initializers.constant(opts.gain_init), (), jnp.float32)

    def embed(self, pos_BxL: jax.Array) -> jax.Array:
        base.check_positions(pos_BxL)
        opts = self.options or ScaledSinusoidalOptions()
        code_BxLxD = sinusoidal.table(pos_BxL, self.dims.d_model, opts.sin.base, opts.sin.layout,
                                      opts.sin.table_dtype)
        return code_BxLxD * self.gain


def _options(config) -> ScaledSinusoidalOptions:
    return ScaledSinusoidalOptions(
        sin=sinusoidal._options(config),
        gain_init=float(base.config_get(config, "sin_gain_init", 1.0)),
    )


base.register(
    "scaled_sinusoidal",
    ScaledSinusoidal,
    _options,
    summary="fixed sin/cos times a learned scalar gain, added to embeddings",
)
