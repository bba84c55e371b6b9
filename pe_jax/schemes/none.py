"""NoPE: no positional signal; the causal mask is the only source of order.

Kazemnejad et al. 2023, "The Impact of Positional Encoding on Length Generalization in
Transformers", arXiv 2305.19466; Haviv et al. 2022, arXiv 2203.16634.
"""

from pe_jax.schemes import base


class NoPE(base.PositionalScheme):
    """Every hook is the neutral default of the base class."""

    enters_at = ()


base.register("none", NoPE, summary="no positional encoding (causal mask only)")
