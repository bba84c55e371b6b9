"""The depth probe (pe_jax.probe): its regression, and what it finds where the answer is
known without training."""

import numpy as np
import pytest

from pe_jax import probe
from tests import helpers


def test_ridge_r2_is_one_for_a_linear_target_and_about_zero_for_noise():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 8))
    y = x @ rng.standard_normal(8) + 3.0
    assert probe.ridge_r2(x[:200], y[:200], x[200:], y[200:]) > 0.999
    noise = rng.standard_normal(400)
    assert abs(probe.ridge_r2(x[:200], noise[:200], x[200:], noise[200:])) < 0.1


@pytest.mark.parametrize("pe,low,high", [
    # One byte repeated: every token of a NoPE model sees the same embedding and, through
    # causal attention over identical values, the same vector at every depth (up to
    # float32 rounding, which the probe must not read). No position: |R^2| <= 0.02.
    ("none", -0.02, 0.02),
    # The same text with a learned table: each of the 16 positions adds its own 32-wide
    # random vector, and a linear map sends every one to its index.
    ("learned", 0.99, 1.0),
])
def test_probe_on_a_repeated_byte_finds_exactly_the_additive_code(pe, low, high):
    cfg = helpers.tiny_config(pe)
    decoder, params, tokens, positions = helpers.init(cfg)
    text = np.full(16 * 20 + 1, ord("a"), np.uint8)
    result = probe.position_probe(cfg, params, text, length=16, windows=20)
    assert len(result["r2"]) == cfg.num_layers + 1 == len(result["shuffled"])
    assert low <= result["r2"][0] <= high, result
    if pe == "none":
        assert max(abs(v) for v in result["r2"]) <= 0.02, result


def test_shuffled_baseline_finds_nothing():
    cfg = helpers.tiny_config("learned")
    _, params, _, _ = helpers.init(cfg)
    text = np.random.default_rng(1).integers(0, 256, 16 * 20 + 1).astype(np.uint8)
    result = probe.position_probe(cfg, params, text, length=16, windows=20)
    assert max(result["shuffled"]) < 0.1, result


def test_probe_needs_two_windows():
    cfg = helpers.tiny_config("none")
    _, params, _, _ = helpers.init(cfg)
    with pytest.raises(ValueError, match="got 1"):
        probe.position_probe(cfg, params, np.zeros(100, np.uint8), length=16, windows=1)


def test_probe_refuses_one_position_windows_and_too_little_text():
    cfg = helpers.tiny_config("none")
    _, params, _, _ = helpers.init(cfg)
    with pytest.raises(ValueError, match="length 1"):
        probe.position_probe(cfg, params, np.zeros(100, np.uint8), length=1, windows=4)
    with pytest.raises(ValueError, match="100 windows of 16 tokens need 1601"):
        probe.position_probe(cfg, params, np.zeros(500, np.uint8), length=16, windows=100)
