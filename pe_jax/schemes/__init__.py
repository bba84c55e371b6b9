"""Positional schemes. Importing this package registers every built-in scheme."""

from pe_jax.schemes import alibi, cope, deberta, fire, kerple, learned, mrope, none, rope, scaled_sinusoidal, shaw, sinusoidal, t5, xpos  # noqa: F401
from pe_jax.schemes.base import (  # noqa: F401
    ModelDims,
    PositionalScheme,
    build,
    get,
    names,
    register,
    unregister,
)
