"""Learned absolute position table added to the token embeddings.

As in GPT-2 and BERT (Devlin et al. 2018, arXiv 1810.04805). The table has
``learned_max_len`` rows (the training length unless the config asks for more).

JAX never raises on an out-of-range gather: plain indexing clamps to the last row. This
module refuses instead: a sequence longer than the table raises at trace time, concrete
positions past the table raise with the offending value, and traced positions (a decode
step under jit) gather with ``mode="fill"`` so that an out-of-range row is NaN, which
surfaces in the loss, never a silently reused row.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pe_jax.schemes import base


@dataclasses.dataclass(frozen=True)
class LearnedOptions:
    max_len: int = 0  # 0: the model's max_len (the training seq_len)
    init_std: float = 0.7071  # matches the RMS of a sin/cos code


class LearnedAbsolute(base.PositionalScheme):
    enters_at = ("embed",)

    @property
    def table_size(self) -> int:
        opts = self.options or LearnedOptions()
        return opts.max_len or self.dims.max_len

    def setup(self):
        opts = self.options or LearnedOptions()
        self.table_TxD = self.param(
            "table",
            nn.initializers.normal(opts.init_std),
            (self.table_size, self.dims.d_model),
        )

    def check_length(self, max_position: int) -> None:
        if max_position >= self.table_size:
            raise ValueError(
                f"position {max_position} (length {max_position + 1}) is past the learned "
                f"table of {self.table_size} positions; learned absolute positions cannot "
                f"extrapolate (raise learned_max_len to train a longer table)"
            )

    def embed(self, pos_BxL: jax.Array) -> jax.Array:
        base.check_positions(pos_BxL)
        if pos_BxL.shape[-1] > self.table_size:
            self.check_length(pos_BxL.shape[-1] - 1)
        if not isinstance(pos_BxL, jax.core.Tracer):
            self.check_length(int(np.asarray(pos_BxL).max()))  # host copy: no trace
        return jnp.take(
            self.table_TxD, pos_BxL, axis=0, mode="fill", fill_value=jnp.nan
        )


def _options(config) -> LearnedOptions:
    max_len = int(base.config_get(config, "learned_max_len", 0))
    if max_len < 0:
        raise ValueError(f"learned_max_len must be >= 0, got {max_len}")
    return LearnedOptions(max_len=max_len)


base.register(
    "learned", LearnedAbsolute, _options, summary="learned absolute table added to embeddings"
)
