"""Incremental decoding with a preallocated KV cache, and sampling.

Every step passes the true positions of its tokens: RoPE rotates a new key at its own
position before it is cached, biases use query position minus cached key positions,
and additive codes are taken at the true position. The cache never wraps around: a
step that would overflow it raises.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pe_jax import model


class CachedDecoder:
    """Host-side driver of a ``model.Decoder`` in decode mode.

    ``step(tokens_BxS, positions_BxS)`` runs ``S`` tokens (a prefill or one token)
    through the cache and returns their float32 logits. The fill level is tracked on the
    host, so that overflow is a clear error rather than a silent wrap.
    """

    def __init__(self, config: model.ModelConfig, params, batch: int, max_len: int):
        if max_len <= 0 or batch <= 0:
            raise ValueError(f"batch and max_len must be positive, got {batch}, {max_len}")
        self.config, self.params, self.max_len = config, params, max_len
        self.decoder = model.Decoder(config)
        # Distinct buffers for every leaf (init_cache may share one array of zeros between
        # layers), since the step donates them all.
        self.cache = jax.tree.map(lambda x: jnp.array(x, copy=True),
                                  model.init_cache(config, batch, max_len))
        self.index = 0
        self.batch = batch
        decoder = self.decoder

        def run(params, cache, tokens_BxS, pos_BxS):
            logits, variables = decoder.apply(
                {"params": params, "cache": cache}, tokens_BxS, pos_BxS, decode=True,
                mutable=["cache"],
            )
            return logits, variables["cache"]

        # Jitted per decoder (a closure, not a method with ``self`` static: that would keep
        # every decoder and its cache alive in JAX's global cache). The cache is donated:
        # XLA writes the new keys and values in place instead of copying every slot.
        self._step = jax.jit(run, donate_argnums=1)

    def step(self, tokens_BxS, positions_BxS) -> jax.Array:
        tokens_BxS = jnp.asarray(tokens_BxS, jnp.int32)
        positions_BxS = np.asarray(positions_BxS)
        if not np.issubdtype(positions_BxS.dtype, np.integer):
            raise ValueError(f"positions must be integers, got dtype {positions_BxS.dtype}")
        if tokens_BxS.ndim != 2 or tokens_BxS.shape[0] != self.batch or tokens_BxS.shape[1] < 1:
            raise ValueError(
                f"tokens must have shape ({self.batch}, S >= 1) for this cache of batch "
                f"{self.batch}, got {tokens_BxS.shape}"
            )
        new = tokens_BxS.shape[1]
        if self.index + new > self.max_len:
            raise ValueError(
                f"KV cache is full: it holds {self.max_len} tokens, {self.index} are used, "
                f"and {new} more were given"
            )
        model.check_length(self.config, int(positions_BxS.max()))
        logits, self.cache = self._step(
            self.params, self.cache, tokens_BxS, jnp.asarray(positions_BxS, jnp.int32)
        )
        self.index += new
        return logits


def sample(
    config: model.ModelConfig,
    params,
    prompt: bytes,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
) -> bytes:
    """Continue ``prompt`` byte by byte: prefill once, then one cached step per byte."""
    if not prompt:
        raise ValueError("the prompt must hold at least one byte")
    if max_new_tokens < 0 or temperature < 0 or top_k < 0:
        raise ValueError(
            f"max_new_tokens, temperature and top_k must be >= 0, got {max_new_tokens}, "
            f"{temperature}, {top_k}"
        )
    runner = CachedDecoder(config, params, batch=1, max_len=len(prompt) + max_new_tokens)
    tokens = np.frombuffer(prompt, dtype=np.uint8).astype(np.int32)[None]
    logits = runner.step(tokens, np.arange(len(prompt))[None])[:, -1]
    key = jax.random.key(seed)
    out = []
    for i in range(max_new_tokens):
        key, sub = jax.random.split(key)
        token = int(_choose(logits[0], sub, temperature, top_k))
        out.append(token)
        if i + 1 < max_new_tokens:
            logits = runner.step([[token]], [[len(prompt) + i]])[:, -1]
    return bytes(out)


def _choose(logits_V: jax.Array, key, temperature: float, top_k: int) -> jax.Array:
    if temperature == 0:
        return jnp.argmax(logits_V)
    logits_V = logits_V / temperature
    if top_k:
        threshold = jax.lax.top_k(logits_V, top_k)[0][-1]
        logits_V = jnp.where(logits_V < threshold, -jnp.inf, logits_V)
    return jax.random.categorical(key, logits_V)
