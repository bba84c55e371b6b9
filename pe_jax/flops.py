"""Model FLOPs of a training step and the float32 matmul speed they are measured against.

Model FLOPs utilisation (MFU) is ``tokens/s * train_flops_per_token / matmul peak``, the
peak being what ``matmul_flops_per_s`` measures on this machine, now (on a shared CPU the
reachable speed moves with the other load, so both are best taken in the same run).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

PEAK_SIZE = 2048  # side of the square float32 matmul that measures the peak


def train_flops_per_token(
    d_model: int, num_layers: int, seq_len: int, vocab_size: int, mlp_ratio: int
) -> float:
    """Model FLOPs of one training token, forward and backward (the PaLM convention).

    ``6 N`` for the ``N`` weights that multiply activations (attention projections, MLP,
    output head; the embedding lookup is a gather) plus ``12 num_layers d_model seq_len``
    for the attention scores and their weighted sum over the whole ``L x L`` square, as
    dense attention computes it. A positional scheme's own work is not counted: it
    lowers MFU, and that is the overhead being measured.
    """
    n_weights = num_layers * (4 + 2 * mlp_ratio) * d_model**2 + d_model * vocab_size
    return 6.0 * n_weights + 12.0 * num_layers * d_model * seq_len


def config_flops_per_token(config) -> float:
    """``train_flops_per_token`` of a pe_jax ConfigDict (vocabulary 256, bytes)."""
    return train_flops_per_token(
        config.d_model, config.num_layers, config.seq_len, 256, config.mlp_ratio
    )


def matmul_flops_per_s(size: int = PEAK_SIZE, repeats: int = 10) -> float:
    """float32 FLOP/s of one jitted ``size``-cube matmul on the default device (median)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2.0 * size**3 / float(np.median(seconds))
