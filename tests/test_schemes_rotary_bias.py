"""Tests of the rotary relatives (xPos, M-RoPE, RoPE extras), the learned relative biases
(KERPLE, FIRE), the scaled sinusoidal code and randomized positions.

Expected numbers are copied from REFERENCE.md (sections 1, 3, 5, 10, 11, 13, 14) or worked
out by hand in this file; none comes from the code under test.

Tolerances, in general: float32 results of formulas whose reference values are float64 are
compared at rtol 1e-6 (a few float32 ulps). Whole-model comparisons between two float32
computations that are equal in exact arithmetic use 1e-5: RoPE-style angles ``p w`` are
rounded differently at different positions ``p`` (an ulp of an angle near 20 is ~2e-6),
and that rounding passes through two layers. Claims that hold bit for bit (M-RoPE on text
versus RoPE, pass-through dims, ``arange`` from random positions) are compared exactly.
"""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from pe_jax import model, positions, schemes
from pe_jax.schemes import fire, kerple, mrope, rope, scaled_sinusoidal, sinusoidal, xpos
from tests import helpers

NEW_SCHEMES = ("xpos", "scaled_sinusoidal", "kerple_log", "kerple_power", "fire", "mrope")
RELATIVE_SCHEMES = ("xpos", "kerple_log", "kerple_power", "fire", "mrope")
B, L = 2, 8
HEAD_DIM = 8  # d_model 32 / 4 heads
MAX_LEN = 16
DIMS = schemes.ModelDims(d_model=32, num_heads=4, head_dim=HEAD_DIM, num_layers=2, max_len=MAX_LEN)

# REFERENCE.md section 3: x = [1, 2, 3, 4] rotated to position 1 (d = 4, base 10000).
X4 = np.array([1.0, 2.0, 3.0, 4.0])
ROPE_HALF_POS1 = [-1.9841106485555495, 1.959900667496664, 2.4623779024123156, 4.019799668334994]
ROPE_INTERLEAVED_POS1 = [
    -1.1426396637476532,
    1.922075596544176,
    2.9598506679133294,
    4.029799501669161,
]


# ---------------------------------------------------------------------------------------------
# helpers


def _config(pe, dtype="float32", **options):
    return model.ModelConfig(
        pe=pe,
        d_model=32,
        num_layers=2,
        num_heads=4,
        max_len=MAX_LEN,
        compute_dtype=dtype,
        pe_config=ml_collections.ConfigDict(dict(options)),
    )


def _tokens(batch=B, length=L, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, 256)


def _arange(batch=B, length=L, start=0):
    return jnp.broadcast_to(jnp.arange(start, start + length, dtype=jnp.int32), (batch, length))


@functools.lru_cache(maxsize=None)
def _init(pe, dtype="float32", options=()):
    """(decoder, params) for a scheme; cached so the module-level tests share inits."""
    decoder = model.Decoder(_config(pe, dtype, **dict(options)))
    params = nn.unbox(decoder.init(jax.random.PRNGKey(0), _tokens(), _arange()))
    return decoder, params


def _rotated(scheme_name, x_Dh, pos, **options):
    """The query side of ``rotate`` for one vector ``x`` at one position (head_dim = len(x))."""
    dims = schemes.ModelDims(len(x_Dh), 1, len(x_Dh), 1, MAX_LEN)
    scheme = schemes.build(scheme_name, dims, ml_collections.ConfigDict(dict(options)))
    x = jnp.asarray(x_Dh, jnp.float32)[None, None, None, :]
    p = jnp.full((1, 1), pos, jnp.int32)
    q, _ = scheme.apply({}, x, x, p, p, method="rotate")
    return np.asarray(q[0, 0, 0], np.float64)


def _score(scheme_name, q_Dh, k_Dh, q_pos, k_pos, **options):
    """``<rotate(q at q_pos), rotate(k at k_pos)>`` for one head, float64 of float32 vectors."""
    dims = schemes.ModelDims(len(q_Dh), 1, len(q_Dh), 1, MAX_LEN)
    scheme = schemes.build(scheme_name, dims, ml_collections.ConfigDict(dict(options)))
    q = jnp.asarray(q_Dh, jnp.float32)[None, None, None, :]
    k = jnp.asarray(k_Dh, jnp.float32)[None, None, None, :]
    qp, kp = jnp.full((1, 1), q_pos, jnp.int32), jnp.full((1, 1), k_pos, jnp.int32)
    q_rot, k_rot = scheme.apply({}, q, k, qp, kp, method="rotate")
    q64, k64 = (np.asarray(a, np.float64).ravel() for a in (q_rot, k_rot))
    return float(np.dot(q64, k64))


def _scheme_vars(name, options=None, dims=DIMS):
    scheme = schemes.build(name, dims, options)
    variables = scheme.init(jax.random.PRNGKey(3), _arange(), _arange(), 0, method="bias")
    return scheme, variables


# ---------------------------------------------------------------------------------------------
# every new scheme through the model


def test_new_schemes_are_registered_under_their_contract_names():
    for name in NEW_SCHEMES:
        assert name in schemes.names()


@pytest.mark.parametrize("pe", NEW_SCHEMES)
def test_decoder_gives_finite_float32_logits_in_float32_and_bfloat16_and_jit_equals_eager(pe):
    decoder, params = _init(pe)
    eager = decoder.apply(params, _tokens(), _arange())
    chex.assert_shape(eager, (B, L, 256))
    chex.assert_type(eager, jnp.float32)
    chex.assert_tree_all_finite(eager)
    # Same float32 computation, compiled (fusion may reorder sums): 1e-5.
    jitted = jax.jit(decoder.apply)(params, _tokens(), _arange())
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)

    # Parameters stay float32; only activations run in bfloat16, and logits come back float32.
    bf16 = model.Decoder(_config(pe, "bfloat16")).apply(params, _tokens(), _arange())
    chex.assert_shape(bf16, (B, L, 256))
    chex.assert_type(bf16, jnp.float32)
    chex.assert_tree_all_finite(bf16)


@pytest.mark.parametrize("pe", NEW_SCHEMES)
def test_gradients_are_finite_and_reach_the_scheme_parameters(pe):
    decoder, params = _init(pe)
    tokens = _tokens()

    def loss(p):
        logits = decoder.apply(p, tokens, _arange())
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    grads = jax.grad(loss)(params)  # eager: cheaper here than compiling a grad per scheme
    chex.assert_tree_all_finite(grads)
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads["params"].get("scheme", {})):
        assert np.any(np.asarray(leaf) != 0), f"no gradient reaches scheme parameter {path}"


def _hook(pe, variables, scheme, x, pos):
    """The scheme's own hook on one batch: rotated (q, k), the bias, or the embedding code."""
    if pe in ("xpos", "mrope"):
        return scheme.apply(variables, x, x, pos, pos, method="rotate")
    if pe == "scaled_sinusoidal":
        return scheme.apply(variables, pos, method="embed")
    return scheme.apply(variables, pos, pos, 1, method="bias")


@pytest.mark.parametrize("pe", NEW_SCHEMES)
def test_vmap_over_examples_matches_the_batched_hook(pe):
    # The same per-example arithmetic, batched differently: 1e-6.
    _, params = _init(pe)
    scheme = schemes.build(pe, DIMS, None)
    variables = {"params": params["params"]["scheme"]} if "scheme" in params["params"] else {}
    x = jax.random.normal(jax.random.PRNGKey(2), (B, L, 4, HEAD_DIM))
    pos = _arange(start=3) + jnp.arange(B, dtype=jnp.int32)[:, None]  # rows differ
    batched = _hook(pe, variables, scheme, x, pos)
    mapped = jax.vmap(lambda xi, pi: _hook(pe, variables, scheme, xi[None], pi[None]))(x, pos)
    mapped = jax.tree_util.tree_map(lambda a: a[:, 0], mapped)
    chex.assert_trees_all_close(mapped, batched, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pe", NEW_SCHEMES)
def test_float_or_wrong_rank_positions_raise_value_error(pe):
    scheme = schemes.build(pe, DIMS, None)
    x = jnp.ones((B, L, 4, HEAD_DIM))

    def call(pos):
        if pe in ("xpos", "mrope"):
            return scheme.init(jax.random.PRNGKey(0), x, x, pos, pos, method="rotate")
        if pe == "scaled_sinusoidal":
            return scheme.init(jax.random.PRNGKey(0), pos, method="embed")
        return scheme.init(jax.random.PRNGKey(0), pos, pos, 0, method="bias")

    with pytest.raises(ValueError, match="integer"):
        call(_arange().astype(jnp.float32))
    with pytest.raises(ValueError, match="shape"):
        call(jnp.arange(L, dtype=jnp.int32))


@pytest.mark.parametrize("pe", RELATIVE_SCHEMES)
def test_logits_unchanged_when_all_positions_shift_by_a_constant(pe):
    # Relative schemes see only i - j (FIRE: while every position stays below its
    # threshold L = max_len = 16; here the largest is 7 + 5 = 12). Equal in exact
    # arithmetic; the rotary schemes round their angles differently at shifted positions.
    decoder, params = _init(pe)
    base_logits = decoder.apply(params, _tokens(), _arange())
    shifted = decoder.apply(params, _tokens(), _arange(start=5))
    np.testing.assert_allclose(shifted, base_logits, rtol=1e-5, atol=1e-5)


def test_fire_is_not_shift_invariant_past_its_threshold():
    # Past L the normaliser is psi(i), a function of the absolute query position, so a
    # shift from 0..7 to 100..107 (threshold 16) changes the bias: FIRE interpolates there.
    decoder, params = _init("fire")
    base_logits = decoder.apply(params, _tokens(), _arange())
    shifted = decoder.apply(params, _tokens(), _arange(start=100))
    assert np.max(np.abs(np.asarray(shifted) - np.asarray(base_logits))) > 1e-3


@pytest.mark.parametrize("pe", ["kerple_log", "fire"])
def test_bias_layer_may_be_traced_and_layers_differ(pe):
    scheme, variables = _scheme_vars(pe)
    static = [scheme.apply(variables, _arange(), _arange(), n, method="bias") for n in (0, 1)]
    traced = jax.jit(lambda n: scheme.apply(variables, _arange(), _arange(), n, method="bias"))
    # Compiled versus eager (fusion reorders the MLP's float32 sum): 1e-6.
    np.testing.assert_allclose(traced(1), static[1], rtol=1e-6, atol=1e-6)
    assert not np.allclose(static[0], static[1]), "per-layer parameters should differ"
    chex.assert_shape(static[0], (B, 4, L, L))
    chex.assert_type(static[0], jnp.float32)


# ---------------------------------------------------------------------------------------------
# RoPE (rope.py): reference vectors, relative property, partial rotary, layout converter


@pytest.mark.parametrize(
    "layout, expected", [("half", ROPE_HALF_POS1), ("interleaved", ROPE_INTERLEAVED_POS1)]
)
def test_rope_rotated_vector_matches_reference(layout, expected):
    # float32 cos/sin of angles 1 and 0.01, against float64 values: rtol 1e-6.
    np.testing.assert_allclose(_rotated("rope", X4, 1, rope_layout=layout), expected, rtol=1e-6)
    np.testing.assert_array_equal(_rotated("rope", X4, 0, rope_layout=layout), X4)


def test_rope_scores_depend_only_on_offset_reference_value():
    # REFERENCE section 3: numpy default_rng(0), q then k, size 8, half-split. The float32
    # rotation of O(1) vectors is good to ~1e-6 of the score's magnitude (3.6): atol 1e-5.
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    for m, n in [(5, 3), (12, 10), (2, 0)]:
        assert _score("rope", q, k, m, n) == pytest.approx(-3.619648197753142, abs=1e-5)


def test_rope_partial_rotary_passes_unrotated_dims_through_and_uses_rotary_width_frequencies():
    # fraction 0.5 of head_dim 8: dims 0..3 are a d=4 RoPE (frequencies 1 and 0.01, the
    # REFERENCE vector); dims 4..7 must come back bit for bit.
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, -6.0, 7.5, 0.25])
    out = _rotated("rope", x, 1, rope_fraction=0.5)
    np.testing.assert_allclose(out[:4], ROPE_HALF_POS1, rtol=1e-6)
    np.testing.assert_array_equal(out[4:], x[4:])


@pytest.mark.parametrize("pe", ["rope", "xpos", "mrope"])
def test_rotary_fraction_leaving_odd_dims_raises_value_error(pe):
    # head_dim 8 * 0.375 = 3 rotated dims: not a whole number of pairs.
    decoder = model.Decoder(_config(pe, rope_fraction=0.375))
    with pytest.raises(ValueError, match="even"):
        decoder.init(jax.random.PRNGKey(0), _tokens(), _arange())


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rope_layout_converter_gives_identical_logits(fraction):
    # A half-split model whose q/k kernels are permuted to the interleaved order must give the
    # same logits under the interleaved layout. Same arithmetic up to the order of the head-dim
    # sum in q.k: 1e-5.
    opts = (("rope_layout", "half"), ("rope_fraction", fraction))
    half_decoder, params = _init("rope", "float32", opts)
    logits_half = half_decoder.apply(params, _tokens(), _arange())

    d_rot = rope.rotary_dim(HEAD_DIM, fraction)
    converted = jax.tree_util.tree_map(lambda x: x, params)
    for layer in range(2):
        attn = converted["params"][f"block_{layer}"]["attn"]
        kernel = attn["qkv"]["kernel"]  # [D, 3, H, Dh]: q, k, v
        new_q = rope.convert_qk_kernel(kernel[:, 0], HEAD_DIM, d_rot, "interleaved")
        new_k = rope.convert_qk_kernel(kernel[:, 1], HEAD_DIM, d_rot, "interleaved")
        attn["qkv"]["kernel"] = kernel.at[:, 0].set(new_q).at[:, 1].set(new_k)

    inter_config = _config("rope", rope_layout="interleaved", rope_fraction=fraction)
    inter_decoder = model.Decoder(inter_config)
    logits_inter = inter_decoder.apply(converted, _tokens(), _arange())
    np.testing.assert_allclose(logits_inter, logits_half, rtol=1e-5, atol=1e-5)

    # The check has teeth: without the permutation the interleaved model differs.
    unconverted = inter_decoder.apply(params, _tokens(), _arange())
    assert np.max(np.abs(np.asarray(unconverted) - np.asarray(logits_half))) > 1e-3


def test_rope_converter_round_trip_is_identity():
    kernel = jnp.arange(2 * 3 * 8, dtype=jnp.float32).reshape(2, 3, 8)
    there = rope.convert_qk_kernel(kernel, 8, 6, "interleaved")
    np.testing.assert_array_equal(rope.convert_qk_kernel(there, 8, 6, "half"), kernel)
    # Hand-worked order for d_rot 6: interleaved pairs (0,3), (1,4), (2,5); dims 6, 7 stay.
    np.testing.assert_array_equal(there[0, 0], [0, 3, 1, 4, 2, 5, 6, 7])


# ---------------------------------------------------------------------------------------------
# xPos


def test_xpos_zeta_matches_reference_d8():
    # REFERENCE section 5 (1.6/5.6 .. 4.6/5.6); float32 rounding of float64: rtol 1e-7.
    expected = [0.28571428571428575, 0.46428571428571436, 0.6428571428571429, 0.8214285714285714]
    np.testing.assert_allclose(xpos.zeta(8), expected, rtol=1e-7)
    assert float(xpos.zeta(64)[0]) == pytest.approx(0.2857142857, rel=1e-7)
    assert float(xpos.zeta(64)[31]) == pytest.approx(0.9776785714285714, rel=1e-7)


@pytest.mark.parametrize(
    "offset, expected",
    [
        (512, [0.2857142857, 0.6428571429]),
        (1024, [0.08163265306122451, 0.41326530612244905]),
        (100, [0.782954834501328, 0.917323159399417]),
    ],
)
def test_xpos_pairwise_factor_for_query_minus_key_offset_matches_reference_d4(offset, expected):
    # The q.k factor of each pair is q_scale(n) * k_scale(m) = zeta^((n - m) / 512), whatever
    # the centre. float32 powers with exponents up to 2 (and 10-digit references): rtol 1e-6.
    zeta_Dr2 = xpos.zeta(4)
    centre = 37
    for m in (0, 5, 3000):
        n = m + offset
        q_scale = xpos.scale(jnp.array([[n]]), zeta_Dr2, 512.0, centre, "half", +1)[0, 0, 0]
        k_scale = xpos.scale(jnp.array([[m]]), zeta_Dr2, 512.0, centre, "half", -1)[0, 0, 0]
        factor = np.asarray(q_scale, np.float64) * np.asarray(k_scale, np.float64)
        np.testing.assert_allclose(factor[:2], expected, rtol=1e-6)
        np.testing.assert_allclose(factor[2:], expected, rtol=1e-6)  # half layout repeats


def test_xpos_scales_queries_by_zeta_and_keys_by_its_inverse_past_the_centre():
    # The sides are fixed: a query B positions past the centre is scaled by zeta, a key there
    # by 1/zeta, so the score of a later query with an earlier key decays (swapping the two
    # makes attention grow with distance). float32 powers: rtol 1e-6.
    zeta_Dr2 = np.array([0.4 / 1.4, 0.9 / 1.4])  # d = 4: (2k/4 + 0.4) / 1.4
    centre = 8
    q_scale = xpos.scale(jnp.array([[centre + 512]]), xpos.zeta(4), 512.0, centre, "half", +1)
    k_scale = xpos.scale(jnp.array([[centre + 512]]), xpos.zeta(4), 512.0, centre, "half", -1)
    np.testing.assert_allclose(q_scale[0, 0, 0, :2], zeta_Dr2, rtol=1e-6)
    np.testing.assert_allclose(k_scale[0, 0, 0, :2], 1.0 / zeta_Dr2, rtol=1e-6)


def test_xpos_score_depends_only_on_offset():
    # Rotation and scale are both relative. Scores near 1-10 from float32 vectors: 1e-5.
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    scores = [_score("xpos", q, k, m, n) for m, n in [(5, 3), (12, 10), (2, 0), (40, 38)]]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-5)


def test_xpos_stays_finite_and_relative_far_from_the_centre():
    # Position 20000 with centre 8: zeta_0^(-19992/512) ~ 1e21 would be inf in float16
    # (documented), fine in float32. Angles near 2e4 carry float32 rounding of ~1e-3 rad,
    # so the comparison with the same offset near 0 is loose: rtol 1e-2.
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    near, far = _score("xpos", q, k, 5, 3), _score("xpos", q, k, 20002, 20000)
    assert math.isfinite(far)
    assert far == pytest.approx(near, rel=1e-2)


def test_xpos_with_huge_scale_base_is_rope_exactly():
    # zeta^(x / 1e30) rounds to exactly 1.0 in float32, so xPos must reduce to RoPE bit for bit.
    x = np.array([1.0, 2.0, 3.0, 4.0, -1.5, 0.5, 2.0, -3.0])
    for pos in (0, 1, 7, 300):
        np.testing.assert_array_equal(
            _rotated("xpos", x, pos, xpos_scale_base=1e30), _rotated("rope", x, pos)
        )


def test_xpos_rotation_and_scale_stay_float32_under_bfloat16():
    # At position 3000 a bfloat16 angle would be off by ~8 rad; computed in float32 and only
    # the result rounded, bfloat16 output equals the float32 one to bfloat16 precision (2^-8,
    # with margin: rtol 2e-2 on O(1) values).
    scheme = schemes.build("xpos", DIMS, None)
    rng = np.random.default_rng(2)
    x32 = jnp.asarray(rng.standard_normal((1, 1, 4, HEAD_DIM)), jnp.float32)
    pos = jnp.array([[3000]], jnp.int32)
    out32, _ = scheme.apply({}, x32, x32, pos, pos, method="rotate")
    out16, _ = scheme.apply({}, x32.astype(jnp.bfloat16), x32.astype(jnp.bfloat16), pos, pos,
                            method="rotate")
    chex.assert_type(out16, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(out16, np.float32), out32, rtol=2e-2, atol=2e-2)


def test_xpos_centre_is_half_the_training_length():
    assert schemes.build("xpos", DIMS, None).centre == MAX_LEN // 2


def test_xpos_rejects_rope_scaling():
    with pytest.raises(ValueError, match="rope_scaling"):
        schemes.get("xpos").make_options({"rope_scaling": '{"rope_type": "linear", "factor": 2.0}'})


# ---------------------------------------------------------------------------------------------
# M-RoPE and axial RoPE


@pytest.mark.parametrize(
    "options", [(), (("rope_layout", "interleaved"),), (("rope_fraction", 0.5),)]
)
def test_mrope_on_text_equals_rope_exactly(options):
    # t = h = w = position selects the same float32 angles as RoPE: bit for bit.
    rope_decoder, params = _init("rope", "float32", options)
    mrope_decoder = model.Decoder(_config("mrope", **dict(options)))
    np.testing.assert_array_equal(
        mrope_decoder.apply(params, _tokens(), _arange(start=3)),
        rope_decoder.apply(params, _tokens(), _arange(start=3)),
    )


def test_mrope_with_three_equal_axes_equals_rope_exactly():
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((B, L, 4, HEAD_DIM)), jnp.float32)
    pos = _arange(start=11)
    pos_3xBxL = jnp.stack([pos, pos, pos])
    rope_q, rope_k = schemes.build("rope", DIMS, None).apply({}, q, q, pos, pos, method="rotate")
    m_q, m_k = schemes.build("mrope", DIMS, None).apply(
        {}, q, q, pos_3xBxL, pos_3xBxL, method="rotate"
    )
    np.testing.assert_array_equal(m_q, rope_q)
    np.testing.assert_array_equal(m_k, rope_k)


def test_mrope_section_axes_match_reference_for_qwen2_vl_sections():
    axis = mrope.axis_of_pair((16, 24, 24))
    assert [axis[k] for k in (15, 16, 39, 40, 63)] == [0, 1, 1, 2, 2]
    assert len(axis) == 64


def test_mrope_default_sections_follow_quarter_three_eighths_split():
    assert mrope.default_section(64) == (16, 24, 24)
    assert mrope.default_section(4) == (1, 2, 1)
    for n in range(1, 70):
        assert sum(mrope.default_section(n)) == n


def test_mrope_rotates_each_band_by_its_own_axis():
    # head_dim 8 -> 4 pairs with frequencies 1, 0.1, 0.01, 0.001; section (1, 2, 1): pair 0
    # uses t = 2, pairs 1-2 use h = 5, pair 3 uses w = 7. Hand-built half-split rotation in
    # float64; float32 result: rtol 1e-6 (atol for the small entries).
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    angle = np.array([2 * 1.0, 5 * 0.1, 5 * 0.01, 7 * 0.001])
    a, b = x[:4], x[4:]
    expected = np.concatenate(
        [a * np.cos(angle) - b * np.sin(angle), b * np.cos(angle) + a * np.sin(angle)]
    )

    scheme = schemes.build("mrope", schemes.ModelDims(8, 1, 8, 1, 16), {"mrope_section": "1,2,1"})
    pos = jnp.array([2, 5, 7], jnp.int32).reshape(3, 1, 1)
    xq = jnp.asarray(x, jnp.float32)[None, None, None]
    out, _ = scheme.apply({}, xq, xq, pos, pos, method="rotate")
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6, atol=1e-6)


def test_mrope_scores_depend_only_on_per_axis_offsets():
    # Shifting t, h and w by different constants (same for q and k) keeps every score:
    # equal in exact arithmetic, float32 angles: 1e-5.
    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.standard_normal((1, L, 4, HEAD_DIM)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, L, 4, HEAD_DIM)), jnp.float32)
    pos = jnp.asarray(rng.integers(0, 20, size=(3, 1, L)), jnp.int32)
    shift = jnp.array([3, 11, 6], jnp.int32)[:, None, None]
    scheme = schemes.build("mrope", DIMS, {"mrope_section": "1,2,1"})

    def scores(p):
        qr, kr = scheme.apply({}, q, k, p, p, method="rotate")
        return jnp.einsum("blhd,bkhd->bhlk", qr, kr)

    np.testing.assert_allclose(scores(pos + shift), scores(pos), rtol=1e-5, atol=1e-5)


def test_mrope_section_that_does_not_sum_to_the_pairs_raises_value_error():
    decoder = model.Decoder(_config("mrope", mrope_section="1,1,1"))
    with pytest.raises(ValueError, match=r"sums to 3.*4 rotary pairs"):
        decoder.init(jax.random.PRNGKey(0), _tokens(), _arange())
    with pytest.raises(ValueError, match="comma-separated"):
        schemes.get("mrope").make_options({"mrope_section": "1;2;1"})


def test_mrope_rejects_positions_with_a_wrong_leading_axis():
    scheme = schemes.build("mrope", DIMS, None)
    x = jnp.ones((B, L, 4, HEAD_DIM))
    bad = jnp.zeros((2, B, L), jnp.int32)
    with pytest.raises(ValueError, match="3, batch, length"):
        scheme.apply({}, x, x, bad, bad, method="rotate")


def test_mrope_position_ids_match_reference_vector():
    # REFERENCE section 14: 2 text tokens, an image grid (1, 2, 3), 2 text tokens.
    ids, delta = mrope.position_ids([2, (1, 2, 3), 2])
    expected = [
        (0, 0, 0), (1, 1, 1),
        (2, 2, 2), (2, 2, 3), (2, 2, 4), (2, 3, 2), (2, 3, 3), (2, 3, 4),
        (5, 5, 5), (6, 6, 6),
    ]  # fmt: skip
    np.testing.assert_array_equal(ids.T, expected)
    assert ids.dtype == np.int32
    assert delta == -3


def test_mrope_position_ids_of_pure_text_are_arange_on_every_axis():
    ids, delta = mrope.position_ids([5])
    np.testing.assert_array_equal(ids, np.tile(np.arange(5), (3, 1)))
    assert delta == 0


def test_axial_rope_rotates_first_half_by_x_and_second_half_by_y():
    # head_dim 8: each half is a d = 4 RoPE (frequencies 1, 0.01), so one unit along an axis
    # gives the REFERENCE section 3 half-split vector on that half and leaves the other.
    x = jnp.asarray(np.concatenate([X4, X4]), jnp.float32)[None, None, None]
    one, zero = jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32)
    by_x = np.asarray(mrope.axial_rope(x, one, zero)[0, 0, 0])
    by_y = np.asarray(mrope.axial_rope(x, zero, one)[0, 0, 0])
    np.testing.assert_allclose(by_x[:4], ROPE_HALF_POS1, rtol=1e-6)
    np.testing.assert_array_equal(by_x[4:], X4)
    np.testing.assert_array_equal(by_y[:4], X4)
    np.testing.assert_allclose(by_y[4:], ROPE_HALF_POS1, rtol=1e-6)


def test_axial_rope_scores_depend_only_on_2d_offsets_and_need_a_multiple_of_four():
    rng = np.random.default_rng(5)
    q = jnp.asarray(rng.standard_normal((1, 6, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 6, 2, 8)), jnp.float32)
    px = jnp.asarray([[0, 1, 2, 0, 1, 2]], jnp.int32)
    py = jnp.asarray([[0, 0, 0, 1, 1, 1]], jnp.int32)

    def scores(dx, dy):
        qr, kr = mrope.axial_rope(q, px + dx, py + dy), mrope.axial_rope(k, px + dx, py + dy)
        return jnp.einsum("blhd,bkhd->bhlk", qr, kr)

    np.testing.assert_allclose(scores(7, 3), scores(0, 0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 4"):
        mrope.axial_rope(jnp.ones((1, 1, 1, 6)), px[:, :1], py[:, :1])


# ---------------------------------------------------------------------------------------------
# KERPLE


@pytest.mark.parametrize(
    "r1, r2, distances, expected",
    [
        (1.0, 1.0, [0, 1, 2, 10, 100],
         [0.0, -0.6931471805599453, -1.0986122886681098, -2.3978952727983707, -4.61512051684126]),
        (2.0, 0.5, [1, 2, 10], [-0.8109302162163288, -1.3862943611198906, -3.58351893845611]),
    ],
)  # fmt: skip
def test_kerple_log_bias_matches_reference(r1, r2, distances, expected):
    # REFERENCE section 10; float32 log1p against float64: rtol 1e-6.
    d = jnp.asarray(distances, jnp.float32)[None, None, :]
    out = kerple.log_bias(d, jnp.array([r1]), jnp.array([r2]))[0, 0, 0]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "r1, r2, distances, expected",
    [
        (1.0, 1.0, [0, 1, 2, 7], [0.0, -1.0, -2.0, -7.0]),
        (0.5, 2.0, [0, 3], [0.0, -4.5]),
        (1.0, 0.5, [0, 4, 10], [0.0, -2.0, -3.1622776601683795]),
    ],
)
def test_kerple_power_bias_matches_reference(r1, r2, distances, expected):
    d = jnp.asarray(distances, jnp.float32)[None, None, :]
    out = kerple.power_bias(d, jnp.array([r1]), jnp.array([r2]))[0, 0, 0]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("r2", [0.3, 1.0, 1.9])
def test_kerple_power_gradient_is_finite_at_zero_distance(r2):
    # d^p has an infinite slope at d = 0 for p < 1 and log(0) in its p-derivative.
    d = jnp.asarray([0.0, 0.0, 1.0, 5.0])[None, None, :]

    def total(params):
        return kerple.power_bias(d, params[0], params[1]).sum()

    grads = jax.grad(total)((jnp.array([0.7]), jnp.array([r2])))
    chex.assert_tree_all_finite(grads)


@pytest.mark.parametrize("pe", ["kerple_log", "kerple_power"])
def test_kerple_bias_is_zero_on_the_diagonal_monotone_and_relative(pe):
    scheme, variables = _scheme_vars(pe)
    q_pos = jnp.array([[3, 4, 5, 9]], jnp.int32)
    k_pos = jnp.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]], jnp.int32)
    bias = np.asarray(scheme.apply(variables, q_pos, k_pos, 1, method="bias"))[0]  # HxLxK
    np.testing.assert_array_equal(bias[:, [0, 1, 2, 3], [3, 4, 5, 9]], 0.0)
    row = bias[:, 3, :10]  # query 9 against keys 0..9: distance 9..0
    assert np.all(np.diff(row, axis=-1) >= 0), "bias must not grow with distance"
    # Query 4 against key 1 and query 5 against key 2: the same distance, the same bias.
    np.testing.assert_array_equal(bias[:, 1, 1], bias[:, 2, 2])


@pytest.mark.parametrize("pe", ["kerple_log", "kerple_power"])
def test_kerple_parameters_stay_positive_after_an_optimizer_step(pe):
    decoder, params = _init(pe)
    scheme = schemes.build(pe, DIMS, None)
    sub = params["params"]["scheme"]

    def neg_bias_sum(p):  # grows with r1 and r2, so a descent step pushes both down
        return -sum(
            scheme.apply({"params": p}, _arange(), _arange(), n, method="bias").sum()
            for n in range(2)
        )

    opt = optax.sgd(1e4)
    grads = jax.grad(neg_bias_sum)(sub)
    updates, _ = opt.update(grads, opt.init(sub))
    stepped = optax.apply_updates(sub, updates)
    assert np.all(np.asarray(stepped["r1"]) < 0) and np.all(np.asarray(stepped["r2"]) < 0)

    for n in range(2):
        r1, r2 = scheme.apply({"params": stepped}, n, method="effective_params")
        np.testing.assert_array_equal(r1, np.float32(1e-2))
        np.testing.assert_array_equal(r2, np.float32(1e-2))
    # The forward uses the clamped values: bias at distance 3 is -0.01 log(1.03) (log) or
    # -0.01 * 3^0.01 (power), worked out by hand in float64; float32: rtol 1e-6.
    bias = scheme.apply({"params": stepped}, _arange(), _arange(), 0, method="bias")
    expected = -0.01 * (math.log(1.03) if pe == "kerple_log" else 3.0**0.01)
    np.testing.assert_allclose(bias[:, :, 3, 0], expected, rtol=1e-6)

    # The whole model stays finite with the pushed parameters.
    pushed = {"params": {**params["params"], "scheme": stepped}}
    chex.assert_tree_all_finite(decoder.apply(pushed, _tokens(), _arange()))


def test_kerple_power_exponent_is_capped_at_two():
    scheme = schemes.build("kerple_power", DIMS, None)
    big = {"params": {"r1": jnp.full((2, 4), 0.5), "r2": jnp.full((2, 4), 7.0)}}
    _, r2 = scheme.apply(big, 0, method="effective_params")
    np.testing.assert_array_equal(r2, 2.0)


# ---------------------------------------------------------------------------------------------
# FIRE


@pytest.mark.parametrize(
    "i, j, expected",
    [
        (0, 0, 0.0),
        (10, 0, 0.17525475289099296),
        (10, 5, 0.10251745851438353),
        (511, 0, 0.9995149164027127),
        (512, 0, 0.9999997471608371),
        (1000, 0, 0.9999997833209816),
        (1000, 999, 0.02065171620216803),
        (2048, 1024, 0.8707878674516709),
        (4096, 0, 0.9999998338213586),
    ],
)
def test_fire_normalized_input_matches_reference(i, j, expected):
    # REFERENCE section 11 (c = 0.1, L = 512, eps = 1e-6); float32 logs: rtol 1e-6.
    u = fire.normalized_distance(
        jnp.array([[i]], jnp.int32),
        jnp.array([[j]], jnp.int32),
        jnp.float32(0.1),
        jnp.float32(512.0),
    )
    assert float(u[0, 0, 0]) == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_fire_psi_of_threshold_matches_reference():
    assert float(fire.psi(jnp.float32(512.0), jnp.float32(0.1))) == pytest.approx(
        3.955082494888593, rel=1e-6
    )


def test_fire_input_lies_in_unit_interval_and_is_zero_on_the_diagonal():
    q_pos = jnp.array([[0, 5, 100, 700, 3000]], jnp.int32)
    u = np.asarray(fire.normalized_distance(q_pos, q_pos, jnp.float32(0.1), jnp.float32(512.0)))[0]
    causal = np.tril(np.ones((5, 5), bool))
    assert np.all((u[causal] >= 0) & (u[causal] <= 1))
    np.testing.assert_array_equal(np.diag(u), 0.0)


def test_fire_fused_mlp_matches_a_plain_two_layer_mlp():
    # The per-unit sum against a float64 numpy MLP; float32 sums of 32 terms: 1e-5.
    rng = np.random.default_rng(6)
    u = rng.uniform(0, 1, size=(2, 3, 5))
    w1, b1 = rng.uniform(-1, 1, 32), rng.uniform(-1, 1, 32)
    w2, b2 = rng.normal(size=(32, 4)), rng.normal(size=4)
    hidden = np.maximum(u[..., None] * w1 + b1, 0.0)
    expected = np.moveaxis(hidden @ w2 + b2, -1, 1)  # BxHxLxK
    out = fire.mlp_bias(*(jnp.asarray(a, jnp.float32) for a in (u, w1, b1, w2, b2)))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_fire_threshold_defaults_to_the_training_length():
    # fire_init_L = 0 means max_len; an explicit value (the reference's 512) is used as given.
    assert schemes.build("fire", DIMS, None).init_L == MAX_LEN
    assert schemes.build("fire", DIMS, {"fire_init_L": 512.0}).init_L == 512.0
    scheme, variables = _scheme_vars("fire")
    assert float(scheme.apply(variables, 1, method="threshold")) == MAX_LEN


# ---------------------------------------------------------------------------------------------
# scaled sinusoidal


def test_scaled_sinusoidal_is_the_sinusoidal_code_times_the_learned_gain():
    scheme = schemes.build("scaled_sinusoidal", DIMS, None)
    pos = _arange()
    variables = scheme.init(jax.random.PRNGKey(0), pos, method="embed")
    assert float(variables["params"]["gain"]) == 1.0  # documented default
    plain = sinusoidal.table(pos, DIMS.d_model)
    doubled = scheme.apply({"params": {"gain": jnp.float32(2.5)}}, pos, method="embed")
    np.testing.assert_allclose(doubled, 2.5 * plain, rtol=1e-7)


def test_scaled_sinusoidal_at_gain_one_matches_reference_d4():
    # REFERENCE section 1, interleaved d = 4, pos 1; float32 sin/cos: rtol 1e-6.
    dims = schemes.ModelDims(4, 1, 4, 1, 16)
    scheme = schemes.build("scaled_sinusoidal", dims, None)
    code = scheme.apply({"params": {"gain": jnp.float32(1.0)}}, jnp.array([[1]]), method="embed")
    expected = [0.8414709848078965, 0.5403023058681398, 0.009999833334166664, 0.9999500004166653]
    np.testing.assert_allclose(code[0, 0], expected, rtol=1e-6)


def test_scaled_sinusoidal_initial_gain_is_configurable():
    scheme = schemes.build("scaled_sinusoidal", DIMS, {"sin_gain_init": 32**-0.5})
    variables = scheme.init(jax.random.PRNGKey(0), _arange(), method="embed")
    assert float(variables["params"]["gain"]) == pytest.approx(32**-0.5, rel=1e-7)
    assert isinstance(scheme.options, scaled_sinusoidal.ScaledSinusoidalOptions)


# ---------------------------------------------------------------------------------------------
# randomized positions (REFERENCE section 13)


def test_random_positions_are_sorted_unique_in_range_int32():
    pos = positions.random_positions(jax.random.PRNGKey(0), 4, 8, 64)
    chex.assert_shape(pos, (4, 8))
    chex.assert_type(pos, jnp.int32)
    pos = np.asarray(pos)
    assert np.all(np.diff(pos, axis=-1) > 0)  # strictly increasing, hence unique
    assert pos.min() >= 0 and pos.max() < 64


def test_random_positions_of_full_length_are_arange():
    pos = positions.random_positions(jax.random.PRNGKey(7), 3, 16, 16)
    np.testing.assert_array_equal(pos, np.tile(np.arange(16), (3, 1)))


def test_random_positions_are_deterministic_per_key_and_differ_across_keys_and_rows():
    a = positions.random_positions(jax.random.PRNGKey(1), 4, 8, 64)
    b = positions.random_positions(jax.random.PRNGKey(1), 4, 8, 64)
    c = positions.random_positions(jax.random.PRNGKey(2), 4, 8, 64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({tuple(row) for row in np.asarray(a).tolist()}) > 1  # one draw per sequence


def test_random_positions_cover_every_slot_uniformly():
    # Each of max_len slots is drawn with probability length / max_len = 0.25. Over 4000 rows
    # the frequency has standard deviation ~0.007; 0.04 is over 5 sigma.
    pos = np.asarray(positions.random_positions(jax.random.PRNGKey(3), 4000, 4, 16))
    freq = np.bincount(pos.ravel(), minlength=16) / 4000
    np.testing.assert_allclose(freq, 0.25, atol=0.04)


def test_random_positions_longer_than_max_len_raise_naming_both():
    with pytest.raises(ValueError, match=r"length 20.*max_len 16"):
        positions.random_positions(jax.random.PRNGKey(0), 2, 20, 16)


def test_random_positions_give_the_same_causal_mask_as_arange():
    # Sorted ids keep the order of tokens, so relative signs and the causal mask survive.
    pos = positions.random_positions(jax.random.PRNGKey(4), 4, 8, 64)
    np.testing.assert_array_equal(
        model.causal_mask(pos, pos), model.causal_mask(_arange(4), _arange(4))
    )


def test_random_positions_under_jit_with_static_sizes():
    draw = jax.jit(positions.random_positions, static_argnums=(1, 2, 3))
    np.testing.assert_array_equal(
        draw(jax.random.PRNGKey(5), 4, 8, 64),
        positions.random_positions(jax.random.PRNGKey(5), 4, 8, 64),
    )


# ---------------------------------------------------------------------------------------
# M-RoPE ids through the whole model (3xBxL positions, dense attention).


def _mrope_model(length=12, batch=2):
    cfg = helpers.tiny_config("mrope", seq_len=length)
    decoder, params, tokens, positions = helpers.init(cfg, length=length, batch=batch)
    return cfg, decoder, params, tokens, positions


def test_decoder_with_three_axis_text_ids_equals_plain_positions():
    _, decoder, params, tokens, positions = _mrope_model()
    ids_3xBxL = jnp.broadcast_to(positions[None], (3, *positions.shape))
    np.testing.assert_array_equal(
        np.asarray(decoder.apply({"params": params}, tokens, ids_3xBxL)),
        np.asarray(decoder.apply({"params": params}, tokens, positions)),
    )


def test_decoder_with_image_ids_is_causal_in_token_order():
    """Text, a 2x3 image grid, text: the lexicographic (t, h, w) mask is the token order,
    so no output depends on a later token (the image's patches share t, and a mask on t
    alone would let them see each other)."""
    from pe_jax.schemes import mrope

    ids_3xL, _ = mrope.position_ids([3, (1, 2, 3), 3])
    length = ids_3xL.shape[1]
    cfg, decoder, params, tokens, _ = _mrope_model(length=length, batch=1)
    ids = jnp.asarray(ids_3xL)[:, None, :]
    embeddings = params["embed"]["embedding"]

    @jax.jit
    def grad_at(t, table):
        def output(table):
            p = dict(params, embed={"embedding": table})
            return jnp.sum(decoder.apply({"params": p}, tokens, ids)[0, t])
        return jax.grad(output)(table)

    for t in (3, 5, 8):  # first patch, a middle patch, the last patch of the image
        grad = grad_at(t, embeddings)
        later = np.setdiff1d(np.asarray(tokens[0, t + 1:]), np.asarray(tokens[0, : t + 1]))
        assert np.all(np.asarray(grad)[later] == 0.0), t
    logits = decoder.apply({"params": params}, tokens, ids)
    chex.assert_shape(logits, (1, length, 256))
    chex.assert_tree_all_finite(logits)


def test_three_axis_ids_are_refused_by_other_schemes_and_by_blockwise_attention():
    _, decoder, params, tokens, positions = _mrope_model()
    ids = jnp.broadcast_to(positions[None], (3, *positions.shape))
    with pytest.raises(ValueError, match="dense attention only"):
        decoder.apply({"params": params}, tokens, ids, block_size=4)
    with pytest.raises(ValueError, match=r"\(3, 2, 12\)"):
        decoder.apply({"params": params}, tokens, ids[:, :, :6])
    cfg = helpers.tiny_config("rope")
    rope_decoder, rope_params, tokens, positions = helpers.init(cfg)
    with pytest.raises(ValueError, match="positions"):
        rope_decoder.apply({"params": rope_params}, tokens, positions[None].repeat(3, 0))
