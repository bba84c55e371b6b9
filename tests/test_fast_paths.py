"""The speed paths equal the plain computations they replace (issue 7).

- ``ops.flat_dot_general`` folds the leading axes of a dense layer's input into one;
- RoPE's rotation has a hand-written gradient (the inverse rotation);
- FIRE evaluates its MLP as matmuls, with a hand-written backward, when the hidden layer
  is small;
- ``flops.train_flops_per_token`` counts the model FLOPs that MFU divides by.

Tolerances: the reshaped products and the hand-written gradients perform the same float32
multiplications and additions as the plain forms, but XLA may sum them in another order
(a blocked matmul, a tree reduction), so they are compared at rtol 1e-5 with an absolute
floor of 1e-5 times the largest entry (sums of up to 2048 terms of size ~1).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from pe_jax import flops, model, ops, schemes
from tests import helpers
from pe_jax.schemes import fire, rope


def assert_close(actual, expected):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        a, e = np.asarray(a), np.asarray(e)
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())


@pytest.mark.parametrize("features,axis", [(12, -1), ((3, 2, 4), -1), (5, (-2, -1))])
def test_flat_dot_general_matches_dense_layers(features, axis):
    x = jax.random.normal(jax.random.key(0), (2, 7, 3, 8))
    plain = nn.DenseGeneral(features, axis=axis)
    flat = nn.DenseGeneral(features, axis=axis, dot_general=ops.flat_dot_general)
    params = plain.init(jax.random.key(1), x)

    def loss(layer, params, x):
        return jnp.sum(jnp.sin(layer.apply(params, x)))

    assert_close(flat.apply(params, x), plain.apply(params, x))
    assert_close(jax.grad(loss, argnums=(1, 2))(flat, params, x),
                 jax.grad(loss, argnums=(1, 2))(plain, params, x))


def test_flat_dot_general_passes_other_products_through():
    a = jax.random.normal(jax.random.key(0), (4, 3, 5))
    b = jax.random.normal(jax.random.key(1), (4, 5, 6))
    batched = (((2,), (1,)), ((0,), (0,)))  # a batch axis: not a dense layer
    np.testing.assert_array_equal(ops.flat_dot_general(a, b, batched),
                                  lax.dot_general(a, b, batched))


@pytest.mark.parametrize("layout", rope.LAYOUTS)
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rope_gradient_is_the_inverse_rotation(layout, fraction):
    x = jax.random.normal(jax.random.key(0), (2, 6, 3, 8))
    d_rot = rope.rotary_dim(8, fraction)
    positions = jnp.broadcast_to(jnp.arange(3, 9), (2, 6))
    cos, sin = rope.cos_sin(positions, 1.0 / 10000.0 ** (np.arange(0, d_rot, 2) / d_rot), layout)

    def plain(x, cos, sin):  # the formula, differentiated by JAX
        x_rot, x_pass = x[..., :d_rot], x[..., d_rot:]
        turned = x_rot * cos + rope._rotate_pairs(x_rot, layout) * sin
        return jnp.concatenate([turned, x_pass], axis=-1)

    def loss(f, x, cos, sin):
        return jnp.sum(jnp.sin(f(x, cos, sin)) * jnp.arange(8.0))

    fast = lambda x, cos, sin: rope.apply(x, cos, sin, layout)  # noqa: E731
    assert_close(fast(x, cos, sin), plain(x, cos, sin))
    assert_close(jax.grad(loss, argnums=(1, 2, 3))(fast, x, cos, sin),
                 jax.grad(loss, argnums=(1, 2, 3))(plain, x, cos, sin))


def test_fire_matmul_mlp_matches_fused_form(monkeypatch):
    keys = jax.random.split(jax.random.key(0), 5)
    w1, b1 = jax.random.normal(keys[0], (32,)), jax.random.normal(keys[1], (32,))
    w2, b2 = jax.random.normal(keys[2], (32, 4)), jax.random.normal(keys[3], (4,))
    positions = jnp.broadcast_to(jnp.arange(16), (2, 16))
    weights = jax.random.normal(keys[4], (2, 4, 16, 16))

    def loss(c, threshold, w1, b1, w2, b2):
        u = fire.normalized_distance(positions, positions, c, threshold)
        return jnp.sum(fire.mlp_bias(u, w1, b1, w2, b2) * weights)

    args = (jnp.float32(0.1), jnp.float32(12.0), w1, b1, w2, b2)
    grad = jax.value_and_grad(loss, argnums=tuple(range(6)))
    matmul = grad(*args)
    monkeypatch.setattr(fire, "MATMUL_MAX_HIDDEN", 0)  # every input takes the fused form
    assert_close(matmul, grad(*args))


def test_train_flops_per_token_reference_config():
    # d 256, 4 layers, L 256, V 256, MLP 4x: weights 4 * 12 * 256^2 + 256 * 256 = 3,211,264;
    # 6 N = 19,267,584 plus attention 12 * 4 * 256 * 256 = 3,145,728.
    assert flops.train_flops_per_token(256, 4, 256, 256, 4) == 22_413_312


@pytest.mark.parametrize("name", schemes.names())
def test_shared_positions_and_causal_query_blocks_change_nothing(name, monkeypatch):
    """Two exact shortcuts of the training step, for every scheme:

    - positions given once as ``1xL`` for the whole batch (tables and biases computed once)
      equal the same positions repeated for every row;
    - dense attention in ``model.QUERY_BLOCKS`` query blocks that skip the key blocks after
      them equals one block (64 tokens: two blocks of 32, the smallest that are split).
    """
    cfg = helpers.tiny_config(name, seq_len=64)
    decoder, params, tokens, positions = helpers.init(cfg, length=64, batch=3)

    def loss_and_grad(pos, blocks):
        monkeypatch.setattr(model, "QUERY_BLOCKS", blocks)
        fn = jax.jit(jax.value_and_grad(
            lambda p: jnp.mean(decoder.apply({"params": p}, tokens, pos) ** 2)
        ))
        return fn(params)

    def assert_same(actual, expected):
        # One absolute floor for the whole gradient: a parameter whose gradient is zero up
        # to rounding (FIRE's threshold, below it) must not demand relative agreement.
        floor = 1e-5 * max(float(np.abs(e).max()) for e in jax.tree.leaves(expected))
        for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=floor)

    # Both shortcuts at once (one compilation fewer per scheme); a failure is then split
    # by rerunning with either one alone.
    assert_same(loss_and_grad(positions[:1], 2), loss_and_grad(positions, 1))
    assert model.causal_blocks(64, 2) == 2 and model.causal_blocks(48, 2) == 1


def test_positions_of_another_batch_size_are_refused():
    cfg = helpers.tiny_config("rope")
    decoder, params, tokens, positions = helpers.init(cfg, batch=3)
    with pytest.raises(ValueError, match=r"\(2, 16\)"):
        decoder.apply({"params": params}, tokens, positions[:2])
