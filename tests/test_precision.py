"""Precision: positions in low-precision dtypes, pe_jax's bfloat16 path, loss scaling.

REFERENCE.md claims 22-23. Expected counts are worked out from the formats, not taken
from the code under test: bfloat16 has 8 significant bits, so integers are exact up to
2^8 = 256, then spaced 2, 4, 8, 16 in [256, 512), [512, 1K), [1K, 2K), [2K, 4K): 128
values per octave, 257 + 4 * 128 = 769 distinct values among 0..4095. float16 has 11
significant bits: exact to 2048, then spaced 2 in [2K, 4K): 2049 + 1024 = 3073.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default as default_config
from pe_jax import data, model, precision, train
from tests import helpers

POS_4000 = np.arange(3992, 4008, dtype=np.int32)[None]  # one row of 16 positions near 4K


def test_bfloat16_positions_are_exact_to_256_and_keep_769_of_4096():
    assert precision.exact_up_to("bfloat16") == 256
    assert precision.distinct_positions(257, "bfloat16") == 257
    assert precision.distinct_positions(4096, "bfloat16") == 769


def test_float16_positions_are_exact_to_2048_and_keep_3073_of_4096():
    assert precision.exact_up_to("float16") == 2048
    assert precision.distinct_positions(4096, "float16") == 3073


def test_audit_writes_json_and_plot_and_separates_bf16_built_from_float32_angles(tmp_path):
    workdir = tmp_path / "new" / "audit"  # missing directories are created
    result = precision.write_audit(str(workdir))
    assert (workdir / "audit.json").exists() and (workdir / "audit.png").stat().st_size > 0
    assert result["bands"] == ["[0,256)", "[256,1K)", "[1K,4K)", "[4K,16K)", "[16K,64K)"]
    assert result["positions"]["bfloat16"]["distinct_among_0_to_n_minus_1"]["4096"] == 769
    # Tables built in bf16: from 1K on a cosine can be off by its whole range (~2).
    assert min(result["rope"]["table_naive_bf16"][2:]) > 1.0
    # float32 angles from integer positions: the table error stays below float32's
    # angle error at 64K (65536 * 2^-24 ~ 4e-3 rad).
    assert max(result["rope"]["table_pe_jax"]) < 5e-3
    assert max(result["sinusoidal"]["table_pe_jax"]) < 5e-3
    # q.k of unit vectors: pe_jax changes it by bf16 rounding of q and k only (~2^-9).
    assert max(result["logits"]["pe_jax"]) < 1e-2
    assert min(result["logits"]["naive_bf16"][2:]) > 0.1
    # Claim 23: distinct table rows among positions 0..4095.
    assert result["table_rows_distinct_0_to_4095"] == {"float32_angles": 4096,
                                                       "bfloat16_angles": 769}


def _capture(pe: str, method_name: str):
    """Inputs and output of the scheme's ``method_name`` in layer 0 of a jitted bf16
    forward at positions 3992..4007: ``(args, output)``."""
    cfg = helpers.tiny_config(pe, compute_dtype="bfloat16")
    decoder = model.Decoder(cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, POS_4000.shape), jnp.int32)

    @jax.jit
    def forward(tokens_, positions_):
        params = decoder.init(jax.random.key(0), tokens_, positions_)
        captured = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == method_name and not captured:
                captured.append((args, out))
            return out

        with nn.intercept_methods(interceptor):
            decoder.apply(nn.unbox(params), tokens_, positions_)
        return captured[0]

    return forward(tokens, jnp.asarray(POS_4000))


def _rotate_half_f64(x, pos, angle_fn):
    """Half-split RoPE of ``x`` (``BxLxHxDh``) in float64 with angles ``angle_fn(pos, w)``."""
    head_dim = x.shape[-1]
    inv_freq = 10000.0 ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angle = angle_fn(pos[..., None], inv_freq)[:, :, None, :]  # Bx L x 1 x Dh/2
    a, b = x[..., : head_dim // 2], x[..., head_dim // 2 :]
    cos, sin = np.cos(angle), np.sin(angle)
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _bf16(x):
    return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32),
                      np.float64)


def test_bf16_model_rotates_q_with_float32_accurate_angles_at_position_4000():
    """In a bfloat16 Decoder the rotated q at 3992..4007 is float64-exact rotation of
    the bf16 q up to one bf16 rounding of the output; angles built in bf16 are not."""
    (q, _, q_pos, _), (q_rot, _) = _capture("rope", "rotate")
    assert q.dtype == jnp.bfloat16 and q_rot.dtype == jnp.bfloat16
    q64 = np.asarray(q.astype(jnp.float32), np.float64)
    pos = np.asarray(q_pos)
    expected = _rotate_half_f64(q64, pos, lambda p, w: p * w)
    bound = 2.0**-8 * np.max(np.abs(expected))  # one bf16 rounding, with room to spare
    error = np.max(np.abs(np.asarray(q_rot.astype(jnp.float32)) - expected))
    assert error <= bound, (error, bound)

    # The naive path: position and frequency in bf16, their product rounded to bf16.
    naive = _rotate_half_f64(q64, pos, lambda p, w: _bf16(_bf16(p) * _bf16(w)))
    naive_error = np.max(np.abs(naive - expected))
    assert naive_error > 0.1 and naive_error > 20 * error, (naive_error, error)


def test_bf16_model_adds_a_float32_sinusoidal_code_exact_at_position_4000():
    (pos,), code = _capture("sinusoidal", "embed")
    assert code.dtype == jnp.float32  # cast to bf16 only after joining the embeddings
    width = code.shape[-1]
    w = 10000.0 ** (-np.arange(0, width, 2, dtype=np.float64) / width)
    angle = np.asarray(pos, np.float64)[..., None] * w
    expected = np.stack([np.sin(angle), np.cos(angle)], -1).reshape(code.shape)
    # float32 angle error at 4000: <= 4000 * 2^-24 ~ 2.4e-4 rad (plus 1 ulp of sin).
    np.testing.assert_allclose(code, expected, atol=5e-4)
    naive_angle = _bf16(_bf16(np.asarray(pos, np.float64))[..., None] * _bf16(w))
    naive = np.stack([np.sin(naive_angle), np.cos(naive_angle)], -1).reshape(code.shape)
    assert np.max(np.abs(naive - expected)) > 0.1


# --- dynamic loss scaling ---------------------------------------------------------


def _tiny(**overrides) -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.update(dict(pe="alibi", d_model=32, num_layers=1, num_heads=4, seq_len=16,
                       batch_size=4, num_steps=10, warmup_steps=0, loss_scale="dynamic",
                       loss_scale_period=2))
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def initial_state():
    """A float32 state with a dynamic loss scale (compute dtype does not change it)."""
    config = _tiny()
    return train.create_state(config, train.model_config(config))


def _steps(state, compute_dtype, scales):
    """``{scale: (start, state, metrics)}`` after one step (one compiled step for all)."""
    decoder = model.Decoder(train.model_config(_tiny(compute_dtype=compute_dtype)))
    state = state.replace(apply_fn=decoder.apply)
    tokens = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)
    batch = data.train_batch(tokens, 0, 4, 16, 0)
    # XLA:CPU without LLVM optimisations: compiles about twice as fast, same math.
    step = jax.jit(train.train_step).lower(state, batch).compile(
        {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
    out = {}
    for scale in scales:
        start = state.replace(loss_scale=train.LossScale.create(scale, period=2))
        out[scale] = (start, *step(start, batch))
    out["twice"] = step(out[scales[-1]][1], batch)  # a second step after the last scale
    return out


@pytest.fixture(scope="module")
def float32_steps(initial_state):
    return _steps(initial_state, "float32", (1.0, 1024.0))


@pytest.fixture(scope="module")
def float16_steps(initial_state):
    # 2^40 / 64 tokens overflows float16 (max 65504) in the backward pass at once.
    return _steps(initial_state, "float16", (2.0**40, 2.0**15))


def test_power_of_two_loss_scale_gives_the_unscaled_update_exactly(float32_steps):
    start, one, metrics_one = float32_steps[1.0]
    _, scaled, metrics = float32_steps[1024.0]
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), one.params, start.params)
    assert all(jax.tree.leaves(moved))  # warm-up 0: the first step has a learning rate
    # Scaling by 2^10 and back is exact in float32 (no overflow, no subnormals here).
    for a, b in zip(jax.tree.leaves(scaled.params), jax.tree.leaves(one.params)):
        np.testing.assert_array_equal(a, b)
    assert int(metrics["skipped"]) == 0 and float(metrics["loss_scale"]) == 1024.0
    np.testing.assert_array_equal(metrics["loss"], metrics_one["loss"])  # unscaled loss
    assert float(scaled.loss_scale.scale) == 1024.0 and int(scaled.loss_scale.good_steps) == 1
    assert int(scaled.step) == 1


def test_scale_doubles_after_period_finite_steps(float32_steps):
    state, metrics = float32_steps["twice"]  # second finite step with period 2
    assert int(metrics["skipped"]) == 0
    assert float(state.loss_scale.scale) == 2048.0 and int(state.loss_scale.good_steps) == 0


def test_float16_overflow_skips_the_step_and_halves_the_scale(float16_steps):
    start, after, metrics = float16_steps[2.0**40]
    assert int(metrics["skipped"]) == 1 and math.isfinite(float(metrics["loss"]))
    for a, b in zip(jax.tree.leaves((after.params, after.opt_state)),
                    jax.tree.leaves((start.params, start.opt_state))):
        np.testing.assert_array_equal(a, b)
    assert int(after.step) == 0
    assert float(after.loss_scale.scale) == 2.0**39 and int(after.loss_scale.good_steps) == 0


def test_float16_step_at_the_initial_scale_updates_float32_params(float16_steps):
    start, after, metrics = float16_steps[2.0**15]
    assert int(metrics["skipped"]) == 0 and math.isfinite(float(metrics["loss"]))
    assert int(after.step) == 1
    leaves = jax.tree.leaves(after.params)
    assert all(x.dtype == jnp.float32 and np.all(np.isfinite(x)) for x in leaves)
    assert not np.array_equal(leaves[0], jax.tree.leaves(start.params)[0])


def test_loss_scale_joins_the_run_signature_only_when_dynamic():
    assert "loss_scale" not in train.run_signature(_tiny(loss_scale="none"))
    assert train.run_signature(_tiny())["loss_scale"] == "dynamic"


# ---------------------------------------------------------------------------------------
# pe_table_dtype="bfloat16": the shipped fault, reproduced on purpose for claim 24.


def test_bf16_built_rope_tables_equal_the_audits_naive_bf16_tables():
    from pe_jax.schemes import rope

    pos_P = np.arange(4096)
    inv_K = precision.inverse_frequencies(64)
    cos, sin = rope.cos_sin(jnp.asarray(pos_P)[None], jnp.asarray(inv_K, jnp.float32),
                            "half", 1.0, "bfloat16")
    ref_cos, ref_sin = precision.cos_sin(pos_P, inv_K, "naive_bf16")
    # Same bf16 angle; cos/sin rounded to bf16 from float32 here, float64 there: one ulp.
    np.testing.assert_allclose(np.asarray(cos[0, :, 0, :32]), ref_cos, atol=2**-8)
    np.testing.assert_allclose(np.asarray(sin[0, :, 0, :32]), ref_sin, atol=2**-8)
    rows = np.concatenate([np.asarray(cos[0, :, 0]), np.asarray(sin[0, :, 0])], axis=-1)
    assert len(np.unique(rows, axis=0)) <= 769  # bf16 positions: at most 769 distinct rows
    f32 = np.asarray(rope.cos_sin(jnp.asarray(pos_P)[None], jnp.asarray(inv_K, jnp.float32),
                                  "half")[0][0, :, 0])
    assert len(np.unique(f32, axis=0)) == 4096


def test_bf16_built_sinusoidal_table_rounds_the_angle():
    from pe_jax.schemes import sinusoidal

    pos_P = np.arange(300, 310)
    code = np.asarray(sinusoidal.table(jnp.asarray(pos_P)[None], 8, table_dtype="bfloat16"))[0]
    angle = precision.angles(pos_P, precision.inverse_frequencies(8), "naive_bf16")
    np.testing.assert_allclose(code[:, 0::2], np.sin(angle), atol=2**-8)
    # bfloat16 holds only even integers in [256, 512); ties go to the even mantissa:
    # 301 -> 300 and 303 -> 304, so those rows repeat their neighbours' codes.
    assert np.array_equal(code[0], code[1]) and np.array_equal(code[3], code[4])
    assert not np.array_equal(code[1], code[2])


@pytest.mark.parametrize("pe", ["rope", "sinusoidal"])
def test_table_dtype_is_checked_and_old_run_signatures_still_match(pe, tmp_path):
    config = default_config.get_config()
    config.pe = pe
    config.pe_table_dtype = "float16"
    with pytest.raises(ValueError, match="float16"):
        train.run_signature(config)
    # A workdir written before the option existed holds no table_dtype: it matches float32.
    config.pe_table_dtype = "float32"
    signature = train.run_signature(config)
    del signature["pe_options"]["table_dtype"]
    (tmp_path / "run.json").write_text(__import__("json").dumps(signature))
    train._check_workdir(str(tmp_path), config)
    config.pe_table_dtype = "bfloat16"
    with pytest.raises(ValueError, match="table_dtype"):
        train._check_workdir(str(tmp_path), config)


@pytest.mark.parametrize("pe", ["xpos", "scaled_sinusoidal"])
def test_bf16_tables_reach_the_schemes_built_on_rope_and_sinusoidal(pe):
    outs = {}
    for table in ("float32", "bfloat16"):
        cfg = helpers.tiny_config(pe, pe_table_dtype=table, seq_len=600, max_len=600)
        decoder, params, tokens, positions = helpers.init(cfg, length=8, batch=1)
        outs[table] = np.asarray(decoder.apply({"params": params}, tokens, positions + 500))
    assert np.abs(outs["bfloat16"] - outs["float32"]).max() > 1e-3  # the fault shows


def test_mrope_refuses_bf16_tables():
    config = default_config.get_config()
    config.pe, config.pe_table_dtype = "mrope", "bfloat16"
    with pytest.raises(ValueError, match="mrope builds its angles in float32"):
        train.run_signature(config)
