"""Blockwise attention and cached decoding agree with the dense forward pass, for every
registered scheme (REFERENCE.md fault kinds: offsets, table lengths, masks)."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from pe_jax import attention, decode, schemes
from tests import helpers

ALL = schemes.names()


def _noisy(params, seed=0):
    """Perturb every parameter so zero-initialised tables (CoPE, Shaw) matter."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    )


def _setup(name, length):
    cfg = helpers.tiny_config(name, seq_len=length)
    decoder, params, tokens, positions = helpers.init(cfg, length=length)
    return cfg, decoder, _noisy(params), tokens, positions


@pytest.mark.parametrize("name", ALL)
def test_blockwise_equals_dense(name):
    cfg, decoder, params, tokens, positions = _setup(name, 40)
    dense = decoder.apply({"params": params}, tokens, positions)
    for block in (8, 16):  # 40 is not a multiple of 16: the padded tail is exercised
        blockwise = jax.jit(
            lambda p, t, q, b=block: decoder.apply({"params": p}, t, q, block_size=b)
        )(params, tokens, positions)
        # Same float32 math in another order (online softmax): a few ulps of the logits.
        np.testing.assert_allclose(blockwise, dense, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", ALL)
def test_cached_decode_matches_full_forward(name):
    cfg, decoder, params, tokens, positions = _setup(name, 12)
    full = decoder.apply({"params": params}, tokens, positions)

    one_by_one = decode.CachedDecoder(cfg, params, batch=2, max_len=12)
    steps = [one_by_one.step(tokens[:, i : i + 1], positions[:, i : i + 1]) for i in range(12)]
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-4, rtol=1e-4)

    prefilled = decode.CachedDecoder(cfg, params, batch=2, max_len=12)
    first = prefilled.step(tokens[:, :5], positions[:, :5])
    rest = [prefilled.step(tokens[:, i : i + 1], positions[:, i : i + 1]) for i in range(5, 12)]
    np.testing.assert_allclose(jnp.concatenate([first, *rest], 1), full, atol=1e-4, rtol=1e-4)


def test_decode_at_a_position_offset_matches_full_forward_at_that_offset():
    """A cache that starts at position 100 rotates keys at 100.., not at 0.."""
    cfg, decoder, params, tokens, positions = _setup("rope", 8)
    full = decoder.apply({"params": params}, tokens, positions + 100)
    runner = decode.CachedDecoder(cfg, params, batch=2, max_len=8)
    steps = [runner.step(tokens[:, i : i + 1], positions[:, i : i + 1] + 100) for i in range(8)]
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_full_cache_raises_instead_of_wrapping():
    cfg, decoder, params, tokens, positions = _setup("alibi", 8)
    runner = decode.CachedDecoder(cfg, params, batch=2, max_len=4)
    runner.step(tokens[:, :4], positions[:, :4])
    with pytest.raises(ValueError, match="KV cache is full: it holds 4 tokens, 4 are used"):
        runner.step(tokens[:, 4:5], positions[:, 4:5])


def test_decode_steps_of_another_batch_or_no_token_are_refused_and_the_cache_survives():
    cfg, decoder, params, tokens, positions = _setup("alibi", 8)
    runner = decode.CachedDecoder(cfg, params, batch=2, max_len=8)
    full = decoder.apply({"params": params}, tokens, positions)
    runner.step(tokens[:, :4], positions[:, :4])
    with pytest.raises(ValueError, match=r"shape \(2, S >= 1\).*got \(1, 1\)"):
        runner.step(tokens[:1, 4:5], positions[:1, 4:5])
    with pytest.raises(ValueError, match=r"got \(2, 0\)"):
        runner.step(tokens[:, 4:4], positions[:, 4:4])
    # The refused steps ran nothing: the (donated) cache goes on from where it was.
    np.testing.assert_allclose(runner.step(tokens[:, 4:6], positions[:, 4:6]), full[:, 4:6],
                               atol=1e-4)


def test_a_dropped_decoder_is_freed_with_its_cache():
    """The jitted step is the decoder's own closure: JAX's caches keep no decoder alive."""
    import gc
    import weakref

    cfg, decoder, params, tokens, positions = _setup("rope", 8)
    runner = decode.CachedDecoder(cfg, params, batch=2, max_len=8)
    runner.step(tokens[:, :2], positions[:, :2])
    ref = weakref.ref(runner)
    del runner
    gc.collect()
    assert ref() is None


def test_learned_decode_past_its_table_raises():
    cfg, decoder, params, tokens, positions = _setup("learned", 8)
    runner = decode.CachedDecoder(cfg, params, batch=2, max_len=16)
    runner.step(tokens, positions)
    with pytest.raises(ValueError, match="position 8"):
        runner.step(tokens[:, :1], positions[:, :1] + 8)


def test_sampling_is_reproducible_and_respects_top_k_1():
    cfg, decoder, params, tokens, positions = _setup("rope", 8)
    a = decode.sample(cfg, params, b"def ", 6, temperature=1.0, top_k=5, seed=3)
    b = decode.sample(cfg, params, b"def ", 6, temperature=1.0, top_k=5, seed=3)
    assert a == b and len(a) == 6
    greedy = decode.sample(cfg, params, b"def ", 6, temperature=0.0)
    assert decode.sample(cfg, params, b"def ", 6, temperature=1.0, top_k=1, seed=9) == greedy


def test_blockwise_never_builds_a_length_squared_array():
    """The largest intermediate of a 4096-token blockwise pass is far below L x L."""
    cfg, decoder, params, tokens, positions = _setup("t5", 16)
    tokens = jnp.zeros((1, 4096), jnp.int32)
    positions = jnp.arange(4096, dtype=jnp.int32)[None]
    jaxpr = jax.make_jaxpr(
        lambda p: decoder.apply({"params": p}, tokens, positions, block_size=256)
    )(params)
    sizes = []

    def walk(jpr):
        for eqn in jpr.eqns:
            for var in eqn.outvars:
                sizes.append(int(np.prod(getattr(var.aval, "shape", ()))))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    assert max(sizes) < 4096 * 4096 // 8, max(sizes)


def test_pad_position_is_past_any_real_position():
    assert attention.PAD_POSITION > 2**24


def test_sliding_windows_score_every_target_once_with_left_context():
    from pe_jax import evaluate

    tokens = np.arange(2000) % 251
    w = evaluate.sliding_windows(tokens.astype(np.uint8), 64, 16, 512)
    scored = np.concatenate(
        [w["targets"][i][w["weights"][i] > 0] for i in range(len(w["targets"]))]
    )
    np.testing.assert_array_equal(scored, (np.arange(1, 513) % 251))  # each once, in order
    assert np.all(w["weights"][1:, :48] == 0)  # later windows score only their last stride


def test_sliding_with_stride_equal_to_length_is_the_nonoverlapping_protocol():
    import ml_collections

    from pe_jax import evaluate

    config = ml_collections.ConfigDict(dict(
        pe="alibi", d_model=32, num_layers=2, num_heads=4, mlp_ratio=4, seq_len=16,
        compute_dtype="float32", eval_tokens=128, eval_batch_tokens=64,
    ))
    _, _, params, _, _ = _setup("alibi", 16)  # the same sizes as `config`
    tokens = np.random.default_rng(0).integers(0, 256, 400).astype(np.uint8)
    plain = evaluate.evaluate_lengths(config, params, tokens, [32])
    sliding = evaluate.evaluate_lengths(config, params, tokens, [32], "sliding", 32)
    np.testing.assert_allclose(sliding[0]["loss"], plain[0]["loss"], rtol=1e-6)
    context = evaluate.evaluate_lengths(config, params, tokens, [32], "sliding", 8)
    assert np.isfinite(context[0]["loss"]) and context[0]["loss"] != plain[0]["loss"]
