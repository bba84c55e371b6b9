"""Contracts every registered scheme must keep, run over the whole registry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pe_jax import model, schemes
from tests import helpers

ALL = schemes.names()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_shape_and_dtype(name, dtype):
    cfg = helpers.tiny_config(name, compute_dtype=dtype)
    decoder, params, tokens, positions = helpers.init(cfg)
    logits = jax.jit(decoder.apply)({"params": params}, tokens, positions)
    chex.assert_shape(logits, (2, 16, 256))
    chex.assert_type(logits, jnp.float32)  # the output head is always float32
    chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("name", ALL)
def test_loss_at_t_has_no_gradient_from_later_inputs(name):
    """Causality, through every hook: d loss_t / d embedding_s == 0 for s > t."""
    cfg = helpers.tiny_config(name)
    decoder, params, tokens, positions = helpers.init(cfg, length=8, batch=1)
    embeddings = params["embed"]["embedding"][tokens]  # 1x8xD

    def loss_at(t, x):
        def fn(x_):
            # Feed embeddings directly by swapping the table for the chosen rows.
            p = jax.tree.map(lambda a: a, params)
            p["embed"]["embedding"] = jnp.zeros_like(params["embed"]["embedding"])
            p["embed"]["embedding"] = p["embed"]["embedding"].at[:8].set(x_[0])
            logits = decoder.apply({"params": p}, jnp.arange(8)[None], positions)
            return jax.nn.logsumexp(logits[0, t])
        return jax.grad(fn)(x)

    for t in (0, 3, 6):
        grad = loss_at(t, embeddings)
        assert np.all(np.asarray(grad[0, t + 1 :]) == 0.0), (name, t)
        assert np.any(np.asarray(grad[0, : t + 1]) != 0.0), (name, t)


@pytest.mark.parametrize("name", ALL)
def test_jit_grad_and_vmap_agree_with_eager(name):
    cfg = helpers.tiny_config(name)
    decoder, params, tokens, positions = helpers.init(cfg)

    def loss(p, tok, pos):
        return jnp.mean(decoder.apply({"params": p}, tok, pos) ** 2)

    eager = loss(params, tokens, positions)
    jitted = jax.jit(loss)(params, tokens, positions)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5)  # same math, fused differently
    grads = jax.jit(jax.grad(loss))(params, tokens, positions)
    chex.assert_tree_all_finite(grads)

    # vmap over single sequences equals the batched call.
    per_seq = jax.vmap(lambda tok, pos: decoder.apply({"params": params}, tok[None], pos[None])[0])
    np.testing.assert_allclose(
        per_seq(tokens, positions), decoder.apply({"params": params}, tokens, positions),
        atol=1e-5, rtol=1e-5,
    )


@pytest.mark.parametrize("name", ALL)
def test_positions_of_wrong_dtype_or_rank_are_refused(name):
    cfg = helpers.tiny_config(name)
    decoder, params, tokens, positions = helpers.init(cfg)
    with pytest.raises(ValueError, match="integer"):
        decoder.apply({"params": params}, tokens, positions.astype(jnp.float32))
    with pytest.raises(ValueError, match="shape"):
        decoder.apply({"params": params}, tokens, positions[0])


def test_unknown_scheme_lists_known_ones():
    with pytest.raises(ValueError, match="unknown positional scheme 'fancy'.*alibi"):
        schemes.get("fancy")
    with pytest.raises(ValueError, match="fancy"):
        model.ModelConfig(pe="fancy")


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        schemes.register("rope", schemes.PositionalScheme)
