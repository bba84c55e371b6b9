"""Reference values and invariants of the six core schemes (REFERENCE.md 1-3, 6, 7).

Expected numbers are written out from REFERENCE.md or worked by hand from the formulas;
none is produced by the code under test.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pe_jax.schemes import alibi, learned, rope, sinusoidal, t5
from pe_jax.schemes.base import ModelDims
from tests import helpers

# --- sinusoidal -------------------------------------------------------------------


def test_sinusoidal_matches_paper_values():
    pos = jnp.array([[1, 2]], jnp.int32)
    d4 = sinusoidal.table(pos[:, :1], 4)[0, 0]
    np.testing.assert_allclose(
        d4, [0.8414709848078965, 0.5403023058681398, 0.009999833334166664, 0.9999500004166653],
        rtol=1e-6,  # float32 table against float64 reference values
    )
    d8 = sinusoidal.table(pos[:, 1:], 8)[0, 0]
    np.testing.assert_allclose(
        d8,
        [0.9092974268256817, -0.4161468365471424, 0.19866933079506122, 0.9800665778412416,
         0.01999866669333308, 0.9998000066665778, 0.0019999986666669333, 0.9999980000006666],
        rtol=1e-6,
    )


def test_sinusoidal_rows_have_norm_sqrt_half_d_and_start_at_0_1():
    pos = jnp.arange(0, 5000, 7, dtype=jnp.int32)[None]
    code = sinusoidal.table(pos, 64)
    np.testing.assert_allclose(jnp.sum(code**2, -1), 32.0, rtol=1e-5)
    np.testing.assert_array_equal(code[0, 0], jnp.tile(jnp.array([0.0, 1.0]), 32))


def test_sinusoidal_is_float32_and_exact_at_large_positions():
    """Angles come from integer positions in float32: position 100000 is not rounded."""
    code = sinusoidal.table(jnp.array([[100000]], jnp.int32), 4)
    chex.assert_type(code, jnp.float32)
    np.testing.assert_allclose(code[0, 0, 0], math.sin(100000.0), atol=1e-3)


# --- learned ----------------------------------------------------------------------


def test_learned_table_refuses_a_length_past_it():
    cfg = helpers.tiny_config("learned")  # table of seq_len = 16 rows
    decoder, params, tokens, _ = helpers.init(cfg)
    long_pos = jnp.arange(32, dtype=jnp.int32)[None]
    with pytest.raises(ValueError, match=r"position 31 \(length 32\).*table of 16"):
        decoder.apply({"params": params}, jnp.zeros((1, 32), jnp.int32), long_pos)
    # Short sequences whose positions pass the table (an offset) are refused too.
    with pytest.raises(ValueError, match="position 20"):
        decoder.apply({"params": params}, tokens[:, :4], jnp.full((2, 4), 20, jnp.int32))


def test_learned_table_never_clips_under_jit():
    """A traced out-of-range position gives NaN (loud), never the last row (silent)."""
    dims = ModelDims(d_model=8, num_heads=2, head_dim=4, num_layers=1, max_len=4)
    module = learned.LearnedAbsolute(dims=dims)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), method="embed")
    out = jax.jit(lambda p: module.apply(variables, p, method="embed"))(
        jnp.array([[3, 4]], jnp.int32)
    )
    assert np.all(np.isfinite(out[0, 0])) and np.all(np.isnan(out[0, 1]))


def test_learned_table_size_follows_config():
    cfg = helpers.tiny_config("learned", learned_max_len=64)
    _, params, _, _ = helpers.init(cfg)
    chex.assert_shape(params["scheme"]["table"], (64, 32))


# --- RoPE -------------------------------------------------------------------------


def _rope_vector(x, pos, layout):
    x = jnp.asarray(x, jnp.float32)
    d = x.shape[-1]
    cos, sin = rope.cos_sin(jnp.array([[pos]]), rope.scaling.default_inv_freq(d, 1e4), layout)
    return rope.apply(jnp.asarray(x, jnp.float32)[None, None, None], cos, sin, layout)[0, 0, 0]


def test_rope_rotated_vectors_match_reference_for_both_layouts():
    x = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(
        _rope_vector(x, 1, "half"),
        [-1.9841106485555495, 1.959900667496664, 2.4623779024123156, 4.019799668334994],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        _rope_vector(x, 1, "interleaved"),
        [-1.1426396637476532, 1.922075596544176, 2.9598506679133294, 4.029799501669161],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(_rope_vector(x, 0, "half"), x)


def test_rope_inv_freq_matches_reference():
    np.testing.assert_allclose(
        rope.scaling.default_inv_freq(8, 10000.0), [1.0, 0.1, 0.01, 0.001], rtol=1e-7
    )


def test_rope_scores_depend_only_on_offset():
    """<R(m)q, R(n)k> for (5,3), (12,10), (2,0) equals REFERENCE's -3.619648197753142."""
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    scores = [
        float(jnp.dot(_rope_vector(q, m, "half"), _rope_vector(k, n, "half")))
        for m, n in [(5, 3), (12, 10), (2, 0)]
    ]
    np.testing.assert_allclose(scores, -3.619648197753142, rtol=1e-5)  # float32 rotation


def test_rope_model_logits_unchanged_when_all_positions_shift_by_1000():
    cfg = helpers.tiny_config("rope")
    decoder, params, tokens, positions = helpers.init(cfg)
    base_logits = decoder.apply({"params": params}, tokens, positions)
    shifted = decoder.apply({"params": params}, tokens, positions + 1000)
    # float32 angles near 1000 rad carry ~6e-5 absolute error; logits stay within 1e-4.
    np.testing.assert_allclose(shifted, base_logits, atol=1e-4, rtol=1e-4)


def test_rope_preserves_norms():
    x = jax.random.normal(jax.random.key(0), (1, 50, 2, 16))
    pos = jnp.arange(0, 5000, 100, dtype=jnp.int32)[None]
    for layout in rope.LAYOUTS:
        cos, sin = rope.cos_sin(pos, rope.scaling.default_inv_freq(16, 1e4), layout)
        y = rope.apply(x, cos, sin, layout)
        np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1),
                                   rtol=1e-5)


def test_rope_odd_head_dim_is_refused():
    with pytest.raises(ValueError, match="head_dim 6 with rope_fraction 0.5 gives 3"):
        rope.rotary_dim(6, 0.5)
    cfg = helpers.tiny_config("rope", d_model=36, num_heads=4)  # head_dim 9
    with pytest.raises(ValueError, match="head_dim 9"):
        helpers.init(cfg)


def test_rope_bfloat16_path_keeps_float32_angles():
    """At position 4000 a bf16 angle would be off by whole radians; ours matches f32."""
    x = jnp.ones((1, 1, 1, 8), jnp.bfloat16)
    pos = jnp.array([[4000]], jnp.int32)
    cos, sin = rope.cos_sin(pos, rope.scaling.default_inv_freq(8, 1e4), "half")
    chex.assert_type(cos, jnp.float32)
    y = rope.apply(x, cos, sin, "half")
    chex.assert_type(y, jnp.bfloat16)
    expected = rope.apply(x.astype(jnp.float32), cos, sin, "half")
    np.testing.assert_allclose(y.astype(jnp.float32), expected, atol=1e-2)  # bf16 output ulp


# --- ALiBi ------------------------------------------------------------------------


def test_alibi_slopes_for_8_and_12_heads():
    np.testing.assert_array_equal(alibi.slopes(8), [2.0**-k for k in range(1, 9)])
    np.testing.assert_allclose(
        alibi.slopes(12),
        [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
         0.7071067811865476, 0.35355339059327384, 0.17677669529663692, 0.08838834764831849],
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    "heads, expected",
    [(1, [2**-8]), (3, [2**-4, 2**-8, 2**-2]), (5, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1]),
     (6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])],
)
def test_alibi_slopes_for_non_powers_of_two(heads, expected):
    np.testing.assert_allclose(alibi.slopes(heads), expected, rtol=1e-12)


def test_alibi_bias_is_zero_on_diagonal_and_linear_in_distance():
    pos = jnp.arange(4, dtype=jnp.int32)[None]
    bias = alibi.bias(pos, pos, jnp.asarray(alibi.slopes(8), jnp.float32))
    chex.assert_shape(bias, (1, 8, 4, 4))
    lower = np.tril(np.asarray(bias[0, 0]))
    np.testing.assert_array_equal(
        lower, [[0, 0, 0, 0], [-0.5, 0, 0, 0], [-1, -0.5, 0, 0], [-1.5, -1, -0.5, 0]]
    )
    shifted = alibi.bias(pos + 777, pos + 777, jnp.asarray(alibi.slopes(8), jnp.float32))
    np.testing.assert_array_equal(shifted, bias)


# --- T5 ---------------------------------------------------------------------------

CAUSAL = {0: 0, -1: 1, -2: 2, -5: 5, -15: 15, -16: 16, -17: 16, -20: 17, -23: 18, -24: 19,
          -31: 21, -32: 21, -50: 24, -64: 26, -100: 30, -127: 31, -128: 31, -129: 31,
          -200: 31, -1000: 31, 1: 0, 5: 0, 200: 0}
BIDIRECTIONAL = {0: 0, -1: 1, -7: 7, -8: 8, -9: 8, -11: 8, -12: 9, -15: 9, -16: 10, -31: 11,
                 -32: 12, -63: 13, -64: 14, -127: 15, -128: 15, -200: 15, 1: 17, 7: 23,
                 8: 24, 16: 26, 32: 28, 64: 30, 128: 31, 200: 31}


@pytest.mark.parametrize("bidirectional, table", [(False, CAUSAL), (True, BIDIRECTIONAL)])
def test_t5_buckets_match_reference(bidirectional, table):
    rel = jnp.array(list(table), jnp.int32)
    got = t5.bucket(rel, 32, 128, bidirectional)
    np.testing.assert_array_equal(got, list(table.values()))


def test_t5_buckets_clip_at_max_distance_and_start_where_reference_says():
    n = jnp.arange(0, 2000, dtype=jnp.int32)
    ids = np.asarray(t5.bucket(-n))
    assert ids.max() == 31 and np.all(ids[113:] == 31) and ids[112] == 30
    starts = {17: 19, 18: 21, 19: 24, 20: 27, 24: 46, 28: 77, 31: 113}
    for bucket_id, first in starts.items():
        assert ids[first] == bucket_id and ids[first - 1] == bucket_id - 1
    assert np.all(np.diff(ids) >= 0)


def test_t5_options_are_validated():
    with pytest.raises(ValueError, match="t5_max_distance"):
        t5.T5Options(num_buckets=32, max_distance=8)
