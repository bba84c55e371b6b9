"""Tests of pe_jax.scaling against numbers worked out from the formulas (REFERENCE.md section 4).

The expected numbers are written here, copied from REFERENCE.md, or computed in this file by
small float64 oracles written from the formulas; none comes from the code under test.

Tolerances: results are float32 rounded once from float64, so they sit within about 6e-8
relative of the exact value; comparisons use 1e-6 relative (REFERENCE values with 10 printed
digits are within that too). Claims that are exact by construction (factor 1, power-of-two
linear factor, untouched high-frequency pairs) are compared bit for bit.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pe_jax import scaling
from pe_jax.scaling import RopeScaling, default_inv_freq, from_hf, inv_freq_and_scale

RTOL = 1e-6  # float32 rounding of a float64 result, with margin.

LLAMA31 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


def _np(x):
    return np.asarray(x, dtype=np.float64)


def _plain(d, base):
    """Oracle: 1 / base^(2k/d) in float64."""
    return 1.0 / base ** (np.arange(0, d, 2) / d)


def _llama3_oracle(d, base, factor, low_ff, high_ff, l0):
    """Oracle written from REFERENCE 4.5, per pair with plain Python floats."""
    out = []
    for k in range(d // 2):
        inv = 1.0 / base ** (2 * k / d)
        wl = 2 * math.pi / inv
        if wl < l0 / high_ff:
            out.append(inv)
        elif wl > l0 / low_ff:
            out.append(inv / factor)
        else:
            smooth = (l0 / wl - low_ff) / (high_ff - low_ff)
            out.append((1 - smooth) * inv / factor + smooth * inv)
    return np.array(out)


# ----------------------------------------------------------------------------------------------
# default


def test_default_inv_freq_matches_reference_vector():
    inv = default_inv_freq(8, 10000.0)
    chex.assert_shape(inv, (4,))
    chex.assert_type(inv, jnp.float32)
    np.testing.assert_allclose(_np(inv), [1.0, 0.1, 0.01, 0.001], rtol=RTOL)


@pytest.mark.parametrize("head_dim", [7, 0, -2, 8.0])
def test_default_inv_freq_rejects_bad_head_dim(head_dim):
    with pytest.raises(ValueError, match="head_dim"):
        default_inv_freq(head_dim, 10000.0)


def test_default_rejects_bad_base():
    with pytest.raises(ValueError, match="base"):
        default_inv_freq(8, 1.0)


# ----------------------------------------------------------------------------------------------
# linear (position interpolation)


@pytest.mark.parametrize("d,base,factor", [(8, 1e4, 2.0), (128, 5e5, 4.0), (64, 1e4, 8.0)])
def test_linear_times_power_of_two_factor_is_default_exactly(d, base, factor):
    inv, attn = inv_freq_and_scale(d, base, RopeScaling("linear", factor=factor))
    chex.assert_trees_all_equal(inv * factor, default_inv_freq(d, base))
    assert attn == 1.0


def test_linear_reference_vector():
    inv, _ = inv_freq_and_scale(8, 1e4, RopeScaling("linear", factor=2.0))
    np.testing.assert_allclose(_np(inv), [0.5, 0.05, 0.005, 0.0005], rtol=RTOL)


@pytest.mark.parametrize("factor", [2.0, 2.5, 4.0])
def test_linear_angle_at_scaled_position_equals_plain_angle(factor):
    # Position interpolation: angle at position s*p equals the plain angle at position p.
    positions = np.array([1.0, 7.0, 100.0, 1000.0, 4000.0], dtype=np.float32)
    inv, _ = inv_freq_and_scale(128, 1e4, RopeScaling("linear", factor=factor))
    scaled = (positions * np.float32(factor))[:, None] * np.asarray(inv)[None, :]
    plain = positions[:, None] * np.asarray(default_inv_freq(128, 1e4))[None, :]
    np.testing.assert_allclose(scaled, plain, rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# static NTK


@pytest.mark.parametrize(
    "d,factor,new_base",
    [
        (128, 8.0, 82684.62264056221),  # REFERENCE 4.2
        (64, 4.0, 10000.0 * 4.0 ** (64 / 62)),  # formula base * s^(d/(d-2))
    ],
)
def test_static_ntk_uses_the_rescaled_base(d, factor, new_base):
    inv, attn = inv_freq_and_scale(d, 1e4, RopeScaling("ntk", factor=factor))
    np.testing.assert_allclose(_np(inv), _plain(d, new_base), rtol=RTOL)
    assert attn == 1.0


# ----------------------------------------------------------------------------------------------
# dynamic NTK


class DynamicNtkTest(chex.TestCase):
    """Run with and without jit: under jit seq_len is a traced int32 scalar."""

    def _call(self, head_dim, factor, max_pos, seq_len, original=None):
        cfg = RopeScaling(
            "dynamic",
            factor=factor,
            max_position_embeddings=max_pos,
            original_max_position_embeddings=original,
        )
        fn = self.variant(lambda n: inv_freq_and_scale(head_dim, 1e4, cfg, n)[0])
        return fn(jnp.asarray(seq_len, jnp.int32))

    @chex.variants(with_jit=True, without_jit=True)
    def test_reference_vectors(self):
        # d=128, s=2, L=8192, max 4096 -> base' = 1e4 * 3^(128/126) (REFERENCE 4.2).
        inv = _np(self._call(128, 2.0, 4096, 8192))
        np.testing.assert_allclose(inv[1], 0.8509942913412162, rtol=RTOL)
        np.testing.assert_allclose(inv[63], 3.849273282298194e-05, rtol=RTOL)
        np.testing.assert_allclose(inv, _plain(128, 30527.7367488067), rtol=RTOL)
        # d=128, s=4, L=16384 -> base' = 135401.97304176545.
        inv = _np(self._call(128, 4.0, 4096, 16384))
        np.testing.assert_allclose(inv, _plain(128, 135401.97304176545), rtol=RTOL)
        # d=64, s=2, L=3000, max 2048 -> base' = 19710.436456319734.
        inv = _np(self._call(64, 2.0, 2048, 3000))
        np.testing.assert_allclose(inv, _plain(64, 19710.436456319734), rtol=RTOL)

    @chex.variants(with_jit=True, without_jit=True)
    def test_lengths_up_to_max_position_give_plain_frequencies(self):
        plain = default_inv_freq(128, 1e4)
        for seq_len in (1, 100, 4095, 4096):
            chex.assert_trees_all_equal(self._call(128, 2.0, 4096, seq_len), plain)

    @chex.variants(with_jit=True, without_jit=True)
    def test_long_call_then_short_call_gives_plain_frequencies(self):
        # No hidden cache: a long call must not leak into a later short one.
        plain = default_inv_freq(128, 1e4)
        long_inv = self._call(128, 2.0, 4096, 8192)
        assert not np.array_equal(_np(long_inv), _np(plain))
        chex.assert_trees_all_equal(self._call(128, 2.0, 4096, 100), plain)

    @chex.variants(with_jit=True, without_jit=True)
    def test_falls_back_to_original_max_position(self):
        inv = _np(self._call(128, 2.0, None, 8192, original=4096))
        np.testing.assert_allclose(inv[1], 0.8509942913412162, rtol=RTOL)


def test_dynamic_static_int_and_none_seq_len():
    cfg = RopeScaling("dynamic", factor=2.0, max_position_embeddings=4096)
    inv, attn = inv_freq_and_scale(128, 1e4, cfg, 8192)
    np.testing.assert_allclose(_np(inv)[63], 3.849273282298194e-05, rtol=RTOL)
    assert attn == 1.0
    chex.assert_trees_all_equal(inv_freq_and_scale(128, 1e4, cfg)[0], default_inv_freq(128, 1e4))
    chex.assert_trees_all_equal(
        inv_freq_and_scale(128, 1e4, cfg, 4096)[0], default_inv_freq(128, 1e4)
    )


def test_dynamic_without_any_max_position_raises():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        inv_freq_and_scale(128, 1e4, RopeScaling("dynamic", factor=2.0), 8192)


# ----------------------------------------------------------------------------------------------
# YaRN


@pytest.mark.parametrize(
    "s,expected",
    [
        (1.0, 1.0),
        (2.0, 1.0693147180559945),
        (4.0, 1.138629436111989),
        (8.0, 1.2079441541679836),
        (16.0, 1.2772588722239782),
        (32.0, 1.3465735902799727),
        (40.0, 1.3688879454113936),
    ],
)
def test_yarn_attention_factor(s, expected):
    cfg = RopeScaling("yarn", factor=s, original_max_position_embeddings=4096)
    _, attn = inv_freq_and_scale(128, 1e4, cfg)
    assert attn == pytest.approx(expected, rel=1e-12)


def test_yarn_d128_s4_reference_vectors():
    cfg = RopeScaling("yarn", factor=4.0, original_max_position_embeddings=4096)
    inv, _ = inv_freq_and_scale(128, 1e4, cfg)
    inv = _np(inv)
    np.testing.assert_allclose(
        inv[:4], [1.0, 0.8659643233600653, 0.7498942093324559, 0.6493816315762113], rtol=RTOL
    )
    np.testing.assert_allclose(inv[62], 3.33380358040831e-05, rtol=RTOL)
    np.testing.assert_allclose(inv[63], 2.8869549617236455e-05, rtol=RTOL)
    # Ratio default / yarn: low = 20, high = 46.
    ratio = _np(default_inv_freq(128, 1e4)) / inv
    np.testing.assert_allclose(ratio[:21], 1.0, rtol=RTOL)
    np.testing.assert_allclose(ratio[21], 1.0297029703, rtol=RTOL)
    np.testing.assert_allclose(ratio[33], 1.6, rtol=RTOL)
    np.testing.assert_allclose(ratio[46:], 4.0, rtol=RTOL)


def test_yarn_d64_s8_reference_ratios():
    cfg = RopeScaling("yarn", factor=8.0, original_max_position_embeddings=2048)
    inv, attn = inv_freq_and_scale(64, 1e4, cfg)
    ratio = _np(default_inv_freq(64, 1e4)) / _np(inv)
    np.testing.assert_allclose(ratio[:9], 1.0, rtol=RTOL)  # low = 8
    np.testing.assert_allclose(ratio[9], 1.0721649485, rtol=RTOL)
    np.testing.assert_allclose(ratio[14], 1.6774193548, rtol=RTOL)
    np.testing.assert_allclose(ratio[21:], 8.0, rtol=RTOL)  # high = 21
    assert attn == pytest.approx(1.2079441541679836, rel=1e-12)


def test_yarn_deepseek_like_s40():
    # DeepSeek-V3 dict: ints for factor and betas, mscale == mscale_all_dim -> factor 1.0.
    cfg = from_hf(
        {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
        max_position_embeddings=163840,
    )
    inv, attn = inv_freq_and_scale(128, 1e4, cfg)
    ratio = _np(default_inv_freq(128, 1e4)) / _np(inv)
    np.testing.assert_allclose(ratio[21], 1.038961039, rtol=RTOL)
    np.testing.assert_allclose(ratio[33], 1.9512195122, rtol=RTOL)
    np.testing.assert_allclose(ratio[46:], 40.0, rtol=RTOL)
    assert attn == 1.0


def test_yarn_mscale_ratio_and_override():
    s = 4.0
    cfg = RopeScaling(
        "yarn", factor=s, original_max_position_embeddings=4096, mscale=2.0, mscale_all_dim=1.0
    )
    expected = (0.2 * math.log(s) + 1) / (0.1 * math.log(s) + 1)
    assert inv_freq_and_scale(128, 1e4, cfg)[1] == pytest.approx(expected, rel=1e-12)
    # mscale alone is ignored (both must be set, as in Hugging Face).
    cfg = RopeScaling("yarn", factor=s, original_max_position_embeddings=4096, mscale=2.0)
    assert inv_freq_and_scale(128, 1e4, cfg)[1] == pytest.approx(1.138629436111989, rel=1e-12)
    cfg = RopeScaling(
        "yarn", factor=s, original_max_position_embeddings=4096, attention_factor=0.75, mscale=2.0
    )
    assert inv_freq_and_scale(128, 1e4, cfg)[1] == 0.75


def test_yarn_factor_inferred_from_max_position():
    cfg = RopeScaling(
        "yarn", factor=None, original_max_position_embeddings=4096, max_position_embeddings=16384
    )
    inv, attn = inv_freq_and_scale(128, 1e4, cfg)
    np.testing.assert_allclose(_np(inv)[63], 2.8869549617236455e-05, rtol=RTOL)  # s = 4
    assert attn == pytest.approx(1.138629436111989, rel=1e-12)


def test_yarn_without_truncate_keeps_fractional_bounds():
    # Oracle from REFERENCE 4.3 with raw low/high (gpt-oss style truncate=False).
    d, base, s, l0 = 64, 150000.0, 32.0, 4096

    def cd(r):
        return d * math.log(l0 / (r * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(cd(32.0), 0), min(cd(1.0), d - 1)
    ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
    expected = _plain(d, base) / s * ramp + _plain(d, base) * (1 - ramp)
    cfg = RopeScaling("yarn", factor=s, original_max_position_embeddings=l0, truncate=False)
    np.testing.assert_allclose(_np(inv_freq_and_scale(d, base, cfg)[0]), expected, rtol=RTOL)
    truncated = RopeScaling("yarn", factor=s, original_max_position_embeddings=l0)
    assert not np.allclose(_np(inv_freq_and_scale(d, base, truncated)[0]), expected, rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# LongRoPE


SHORT_D8 = (1.0, 1.0, 1.5, 2.0)
LONG_D8 = (1.0, 2.0, 4.0, 8.0)


class LongRopeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_switches_to_long_factors_strictly_above_original_length(self):
        cfg = RopeScaling(
            "longrope",
            factor=None,
            short_factor=SHORT_D8,
            long_factor=LONG_D8,
            original_max_position_embeddings=4096,
            max_position_embeddings=131072,
        )
        fn = self.variant(lambda n: inv_freq_and_scale(8, 1e4, cfg, n)[0])
        # Plain d=8 frequencies are [1, 0.1, 0.01, 0.001] (REFERENCE 3), divided by the factors.
        short = [1.0, 0.1, 0.01 / 1.5, 0.0005]
        long = [1.0, 0.05, 0.0025, 0.000125]
        np.testing.assert_allclose(_np(fn(jnp.int32(1))), short, rtol=RTOL)
        np.testing.assert_allclose(_np(fn(jnp.int32(4096))), short, rtol=RTOL)
        np.testing.assert_allclose(_np(fn(jnp.int32(4097))), long, rtol=RTOL)
        np.testing.assert_allclose(_np(fn(jnp.int32(100000))), long, rtol=RTOL)


def test_longrope_static_seq_len_switch_and_none():
    cfg = RopeScaling(
        "longrope",
        factor=32.0,
        short_factor=SHORT_D8,
        long_factor=LONG_D8,
        original_max_position_embeddings=4096,
    )
    short = inv_freq_and_scale(8, 1e4, cfg, 4096)[0]
    long = inv_freq_and_scale(8, 1e4, cfg, 4097)[0]
    np.testing.assert_allclose(_np(short), [1.0, 0.1, 0.01 / 1.5, 0.0005], rtol=RTOL)
    np.testing.assert_allclose(_np(long), [1.0, 0.05, 0.0025, 0.000125], rtol=RTOL)
    chex.assert_trees_all_equal(inv_freq_and_scale(8, 1e4, cfg)[0], short)


def test_longrope_d128_factors():
    rng = np.random.default_rng(0)
    short_f = tuple(1.0 + rng.random(64))
    long_f = tuple(1.0 + 10 * rng.random(64))
    cfg = RopeScaling(
        "longrope",
        factor=16.0,
        short_factor=short_f,
        long_factor=long_f,
        original_max_position_embeddings=4096,
    )
    inv, attn = inv_freq_and_scale(128, 1e4, cfg, 5000)
    np.testing.assert_allclose(_np(inv), _plain(128, 1e4) / np.array(long_f), rtol=RTOL)
    assert attn == pytest.approx(1.1547005383792517, rel=1e-12)


@pytest.mark.parametrize(
    "factor,max_pos,expected",
    [
        (None, 131072, 1.1902380714238083),  # s = 131072 / 4096 = 32 (Phi-3 style)
        (32.0, None, 1.1902380714238083),
        (16.0, None, 1.1547005383792517),
        (1.0, None, 1.0),
    ],
)
def test_longrope_attention_factor(factor, max_pos, expected):
    cfg = RopeScaling(
        "longrope",
        factor=factor,
        short_factor=(1.0,) * 64,
        long_factor=(1.0,) * 64,
        original_max_position_embeddings=4096,
        max_position_embeddings=max_pos,
    )
    assert inv_freq_and_scale(128, 1e4, cfg)[1] == pytest.approx(expected, rel=1e-12)


def test_longrope_factor_length_must_match_head_dim():
    cfg = RopeScaling(
        "longrope",
        short_factor=(1.0,) * 4,
        long_factor=(1.0,) * 3,
        original_max_position_embeddings=4096,
    )
    with pytest.raises(ValueError, match="long_factor"):
        inv_freq_and_scale(8, 1e4, cfg)
    with pytest.raises(ValueError, match="short_factor"):
        inv_freq_and_scale(16, 1e4, cfg)


# ----------------------------------------------------------------------------------------------
# Llama 3


def test_llama3_reference_vectors():
    inv, attn = inv_freq_and_scale(128, 500000.0, from_hf(LLAMA31))
    inv, plain = _np(inv), _np(default_inv_freq(128, 500000.0))
    assert attn == 1.0
    np.testing.assert_allclose(inv[1], 0.81461723385654472, rtol=RTOL)
    np.testing.assert_allclose(inv[20], 0.016560440080994446, rtol=RTOL)
    np.testing.assert_allclose(inv[30], 0.0013718935677611381, rtol=RTOL)
    np.testing.assert_allclose(inv[31], 0.00085675141291963208, rtol=RTOL)
    np.testing.assert_allclose(inv[40], 3.4281021959525912e-05, rtol=RTOL)
    np.testing.assert_allclose(inv[63], 3.0689259889145111e-07, rtol=RTOL)
    divisors = plain / inv
    np.testing.assert_allclose(
        divisors[29:35],
        [1.2074838713, 1.5534146285, 2.0263132059, 2.6945296879, 3.6842525277, 5.2573265887],
        rtol=RTOL,
    )
    # 29 unchanged (bit for bit), 6 smoothed, 29 divided by 8 (exact: power of two).
    unchanged = inv == plain
    divided = inv * 8 == plain
    assert np.flatnonzero(unchanged).tolist() == list(range(29))
    assert np.flatnonzero(divided).tolist() == list(range(35, 64))
    assert int(np.sum(~unchanged & ~divided)) == 6


def test_llama32_config_matches_oracle():
    # Llama 3.2 1B/3B: head dim 64, factor 32, band 1..4, L0 8192, base 5e5.
    cfg = RopeScaling(
        "llama3",
        factor=32.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    inv, _ = inv_freq_and_scale(64, 500000.0, cfg)
    expected = _llama3_oracle(64, 500000.0, 32.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(_np(inv), expected, rtol=RTOL)


@pytest.mark.parametrize("d,base,factor,l0", [(128, 500000.0, 8.0, 8192), (64, 1e4, 4.0, 2048)])
def test_llama3_keeps_high_frequency_pairs(d, base, factor, l0):
    cfg = RopeScaling(
        "llama3",
        factor=factor,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=l0,
    )
    inv, plain = _np(inv_freq_and_scale(d, base, cfg)[0]), _np(default_inv_freq(d, base))
    high = 2 * math.pi / _plain(d, base) < l0 / 4.0
    assert high.sum() > 0
    np.testing.assert_array_equal(inv[high], plain[high])
    low = 2 * math.pi / _plain(d, base) > l0 / 1.0
    np.testing.assert_allclose(inv[low] * factor, plain[low], rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# Claim 14: factor 1 is plain RoPE, bit for bit.


@pytest.mark.parametrize(
    "cfg",
    [
        RopeScaling("linear", factor=1.0),
        RopeScaling("ntk", factor=1.0),
        RopeScaling("dynamic", factor=1.0, max_position_embeddings=4096),
        RopeScaling("yarn", factor=1.0, original_max_position_embeddings=4096),
        RopeScaling("yarn", factor=1.0, original_max_position_embeddings=4096, truncate=False),
        RopeScaling(
            "llama3",
            factor=1.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        RopeScaling(
            "longrope",
            factor=1.0,
            short_factor=(1.0,) * 64,
            long_factor=(1.0,) * 64,
            original_max_position_embeddings=4096,
        ),
    ],
    ids=lambda c: c.rope_type,
)
@pytest.mark.parametrize("base", [1e4, 5e5])
def test_factor_one_is_plain_rope_bit_for_bit(cfg, base):
    # seq_len within the model's range (dynamic NTK with factor 1 still grows the base beyond
    # max_position_embeddings, by its formula); longrope is checked on both sides of L0.
    for seq_len in (None, 4096, 5000) if cfg.rope_type == "longrope" else (None, 4096):
        inv, attn = inv_freq_and_scale(128, base, cfg, seq_len)
        chex.assert_trees_all_equal(inv, default_inv_freq(128, base))
        assert attn == 1.0


# ----------------------------------------------------------------------------------------------
# from_hf


def test_from_hf_llama31():
    cfg = from_hf(LLAMA31, max_position_embeddings=131072)
    assert cfg == RopeScaling(
        "llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
        max_position_embeddings=131072,
    )


def test_from_hf_legacy_type_and_ignored_keys():
    assert from_hf({"type": "linear", "factor": 2.0}) == RopeScaling("linear", factor=2.0)
    assert from_hf({"type": "ntk", "factor": 8}) == RopeScaling("ntk", factor=8.0)
    cfg = from_hf({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    assert cfg == RopeScaling()
    assert from_hf(None) == RopeScaling() == from_hf({})
    assert from_hf({"rope_theta": 1e6}) == RopeScaling()


def test_from_hf_yarn_dicts():
    cfg = from_hf({"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"})
    assert (cfg.rope_type, cfg.factor, cfg.original_max_position_embeddings) == ("yarn", 4.0, 32768)
    gpt_oss = from_hf(
        {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        }
    )
    assert gpt_oss.truncate is False and gpt_oss.beta_fast == 32.0
    # No factor: inferred from max_position_embeddings / original (DeepSeek-V3 style).
    cfg = from_hf(
        {"rope_type": "yarn", "original_max_position_embeddings": 4096},
        max_position_embeddings=16384,
    )
    assert cfg.factor is None
    assert inv_freq_and_scale(128, 1e4, cfg)[1] == pytest.approx(1.138629436111989, rel=1e-12)


def test_from_hf_longrope_and_su_alias():
    short_f, long_f = [1.0, 1.0, 1.5, 2.0], [1.0, 2.0, 4.0, 8.0]
    cfg = from_hf(
        {"type": "su", "short_factor": short_f, "long_factor": long_f},
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
    )
    assert cfg.rope_type == "longrope"
    assert cfg.short_factor == tuple(short_f) and cfg.long_factor == tuple(long_f)
    inv, attn = inv_freq_and_scale(8, 1e4, cfg, 4097)
    np.testing.assert_allclose(_np(inv), [1.0, 0.05, 0.0025, 0.000125], rtol=RTOL)
    assert attn == pytest.approx(1.1902380714238083, rel=1e-12)
    cfg = from_hf(
        {
            "rope_type": "longrope",
            "short_factor": short_f,
            "long_factor": long_f,
            "factor": 16.0,
            "original_max_position_embeddings": 4096,
        }
    )
    assert inv_freq_and_scale(8, 1e4, cfg)[1] == pytest.approx(1.1547005383792517, rel=1e-12)


@pytest.mark.parametrize(
    "rope_dict,key",
    [
        ({"rope_type": "linear"}, "factor"),
        ({"type": "dynamic"}, "factor"),
        ({k: v for k, v in LLAMA31.items() if k != "low_freq_factor"}, "low_freq_factor"),
        (
            {k: v for k, v in LLAMA31.items() if k != "original_max_position_embeddings"},
            "original_max_position_embeddings",
        ),
        ({"rope_type": "longrope", "short_factor": [1.0]}, "long_factor"),
        ({"rope_type": "yarn"}, "factor"),
        ({"factor": 2.0}, "rope_type"),
    ],
)
def test_from_hf_missing_key_names_it(rope_dict, key):
    with pytest.raises(ValueError, match=key):
        from_hf(rope_dict)


def test_from_hf_missing_key_names_rope_type():
    with pytest.raises(ValueError, match="llama3"):
        from_hf({k: v for k, v in LLAMA31.items() if k != "high_freq_factor"})


@pytest.mark.parametrize(
    "rope_dict,key",
    [
        ({"rope_type": "linear", "factor": 0.5}, "factor"),
        ({"rope_type": "dynamic", "factor": 0.9}, "factor"),
        ({"rope_type": "yarn", "factor": 0.5, "original_max_position_embeddings": 4096}, "factor"),
        ({**LLAMA31, "factor": 0.5}, "factor"),
        ({**LLAMA31, "low_freq_factor": 4.0}, "low_freq_factor"),
        ({**LLAMA31, "low_freq_factor": 5.0}, "high_freq_factor"),
        ({"rope_type": "linear", "factor": "2"}, "factor"),
        ({"rope_type": "yarn", "factor": 4.0, "attention_factor": -1.0}, "attention_factor"),
        ({"rope_type": "yarn", "factor": 4.0, "beta_fast": 1.0, "beta_slow": 32.0}, "beta_fast"),
        ({"rope_type": "yarn", "factor": 4.0, "truncate": "no"}, "truncate"),
        ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [0.0]}, "long_factor"),
        ({"rope_type": "linear", "type": "dynamic", "factor": 2.0}, "type"),
    ],
)
def test_from_hf_out_of_range_names_the_key(rope_dict, key):
    with pytest.raises(ValueError, match=key):
        from_hf(rope_dict)


def test_from_hf_unknown_rope_type_lists_accepted_ones():
    with pytest.raises(ValueError, match=r"'rotary9'.*linear.*llama3"):
        from_hf({"rope_type": "rotary9", "factor": 2.0})


@pytest.mark.parametrize(
    "rope_dict,key",
    [
        ({"rope_type": "linear", "factor": 2.0, "foo": 1}, "foo"),
        ({"type": "linear", "factor": 2.0, "low_freq_factor": 1.0}, "low_freq_factor"),
        ({**LLAMA31, "beta_fast": 32.0}, "beta_fast"),
        ({"rope_type": "default", "factor": 2.0}, "factor"),
    ],
)
def test_from_hf_unknown_key_names_it(rope_dict, key):
    with pytest.raises(ValueError, match=key):
        from_hf(rope_dict)


def test_from_hf_conflicting_original_max_position():
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        from_hf(LLAMA31, original_max_position_embeddings=4096)


# ----------------------------------------------------------------------------------------------
# Direct construction and call-site validation


def test_rope_scaling_rejects_unknown_type_and_missing_fields():
    with pytest.raises(ValueError, match=r"'cosine'.*default"):
        RopeScaling("cosine")
    with pytest.raises(ValueError, match="high_freq_factor"):
        RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, original_max_position_embeddings=8)
    with pytest.raises(ValueError, match="short_factor"):
        RopeScaling("longrope", long_factor=(1.0,))
    with pytest.raises(ValueError, match="factor"):
        RopeScaling("linear", factor=None)


def test_yarn_and_longrope_need_something_to_infer_factor_from():
    with pytest.raises(ValueError, match="factor"):
        inv_freq_and_scale(128, 1e4, RopeScaling("yarn", factor=None, max_position_embeddings=8))
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        inv_freq_and_scale(128, 1e4, RopeScaling("yarn", factor=2.0))


def test_seq_len_validation():
    cfg = RopeScaling("dynamic", factor=2.0, max_position_embeddings=4096)
    with pytest.raises(ValueError, match="seq_len"):
        inv_freq_and_scale(128, 1e4, cfg, -1)
    with pytest.raises(ValueError, match="seq_len"):
        inv_freq_and_scale(128, 1e4, cfg, jnp.array([1, 2]))
    with pytest.raises(ValueError, match="seq_len"):
        inv_freq_and_scale(128, 1e4, cfg, 10.5)


def test_all_rope_types_are_covered():
    expected = {"default", "linear", "dynamic", "ntk", "yarn", "llama3", "longrope"}
    assert set(scaling.ROPE_TYPES) == expected


def test_traced_seq_len_is_traced_once_for_all_lengths():
    cfg = RopeScaling("dynamic", factor=2.0, max_position_embeddings=4096)
    traces = []

    def inv_freq(n):
        traces.append(n)
        return inv_freq_and_scale(128, 1e4, cfg, n)[0]

    fn = jax.jit(inv_freq)
    outputs = [fn(jnp.int32(n)) for n in (100, 8192, 100)]
    assert len(traces) == 1
    chex.assert_trees_all_equal(outputs[0], outputs[2], default_inv_freq(128, 1e4))
