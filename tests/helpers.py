"""Small builders shared by the tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from pe_jax import model


def tiny_config(pe: str, **overrides) -> model.ModelConfig:
    """A 2-layer, width-32 decoder with the scheme's options from ``overrides``."""
    pe_config = ml_collections.ConfigDict({"seq_len": 16, **overrides})
    sizes = {k: pe_config[k] for k in ("d_model", "num_layers", "num_heads", "max_len",
                                       "compute_dtype") if k in pe_config}
    sizes.setdefault("max_len", pe_config.seq_len)
    return model.ModelConfig(pe=pe, **{"d_model": 32, "num_layers": 2, "num_heads": 4,
                                       **sizes}, pe_config=pe_config)


def init(cfg: model.ModelConfig, length: int = 16, batch: int = 2, seed: int = 0):
    decoder = model.Decoder(cfg)
    tokens = jax.random.randint(jax.random.key(seed + 1), (batch, length), 0, 256)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    # Plain arrays: init boxes the decoder's parameters with their logical axis names.
    params = nn.unbox(decoder.init(jax.random.key(seed), tokens, positions)["params"])
    return decoder, params, tokens, positions
