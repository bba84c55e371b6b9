"""pe_jax: a JAX/Flax laboratory for transformer positional encodings."""

__version__ = "0.1.0"
