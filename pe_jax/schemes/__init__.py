"""Positional schemes. Importing this package registers every built-in scheme."""

from pe_jax.schemes import alibi, learned, none, rope, sinusoidal, t5  # noqa: F401
from pe_jax.schemes.base import (  # noqa: F401
    ModelDims,
    PositionalScheme,
    build,
    get,
    names,
    register,
    unregister,
)
