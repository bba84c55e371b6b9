"""RoPE context extension: scaled evaluation, fine-tune from a checkpoint, the extension job."""

import json
import os

import jax
import numpy as np
import pytest

from configs import extension as extension_config
from configs import finetune as finetune_config
from pe_jax import data, evaluate, extension, train
from tests.test_training import tiny


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    return data.Corpus("random", rng.integers(0, 256, 20000, dtype=np.uint8),
                       rng.integers(0, 256, 4000, dtype=np.uint8))


@pytest.fixture(scope="module")
def ext_run(tmp_path_factory, corpus):
    """The extension job in quick mode (L = 16, tiny model); its W/base serves as the
    trained RoPE model of the other tests, since compiling is most of the time here."""
    workdir = str(tmp_path_factory.mktemp("ext"))
    config = extension_config.get_config()
    config.extension_quick = True
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load", lambda *a, **k: corpus)
        extension.run(config, workdir)
    return workdir


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_linear_scaling_changes_the_loss_and_writes_its_own_file(ext_run, corpus):
    base = os.path.join(ext_run, "base")
    plain = evaluate.evaluate_workdir(base, [16, 64], corpus)
    scaled = evaluate.evaluate_workdir(base, [16, 64], corpus,
                                       rope_scaling='{"rope_type": "linear", "factor": 4}')
    assert [r["length"] for r in scaled] == [16, 64]
    assert all(np.isfinite(r["loss"]) and np.isclose(r["ppl"], np.exp(r["loss"])) for r in scaled)
    # Frequencies / 4 move every non-zero angle, so the losses cannot coincide.
    assert all(abs(p["loss"] - s["loss"]) > 1e-6 for p, s in zip(plain, scaled))
    assert json.load(open(os.path.join(base, "eval_linear.json"))) == scaled
    assert json.load(open(os.path.join(base, "eval.json"))) == plain  # left alone


def test_rules_needing_l0_default_it_to_the_training_length():
    config, rope_type = evaluate.with_rope_scaling(
        tiny(), {"rope_type": "llama3", "factor": 4, "low_freq_factor": 1,
                 "high_freq_factor": 4})
    assert rope_type == "llama3"
    assert json.loads(config.rope_scaling)["original_max_position_embeddings"] == 16
    config, _ = evaluate.with_rope_scaling(
        tiny(), '{"rope_type": "yarn", "factor": 2, "original_max_position_embeddings": 8}')
    assert json.loads(config.rope_scaling)["original_max_position_embeddings"] == 8  # kept
    config, _ = evaluate.with_rope_scaling(tiny(), {"rope_type": "linear", "factor": 2})
    assert "original_max_position_embeddings" not in json.loads(config.rope_scaling)


@pytest.mark.parametrize(
    "pe, value, message",
    [("rope", '{"rope_type": "linear", "factor": ',
      r"""rope_scaling '\{"rope_type": "linear", "factor": ' is not valid JSON"""),
     ("rope", "[4]", r"must be a JSON object \(a dict\), got '\[4\]'"),
     ("rope", '{"rope_type": "linear", "factor": 0.5}',
      r"""rope_scaling '\{"rope_type": "linear", "factor": 0.5\}': .*'factor' must be >= 1"""),
     ("alibi", '{"rope_type": "linear", "factor": 4}',
      r"applies to the 'rope' scheme only; this run uses pe='alibi'")],
)
def test_bad_rope_scaling_is_refused_naming_the_value(pe, value, message):
    with pytest.raises(ValueError, match=message):
        evaluate.with_rope_scaling(tiny(pe=pe), value)


def test_init_from_starts_from_the_source_params_with_fresh_optimizer(ext_run, corpus, tmp_path):
    base = os.path.join(ext_run, "base")
    source, _ = train.restore_latest(base, evaluate.load_config(base))
    config = extension.quick(extension_config.get_config())
    config.update(dict(job="train", init_from=base, seq_len=64, rope_max_position_embeddings=16,
                       rope_scaling='{"rope_type": "linear", "factor": 4}', seed=1))
    fresh = train.create_state(config, train.model_config(config))
    loaded = train.params_from(base, fresh.params)
    for a, b in zip(_leaves(loaded), _leaves(source.params)):
        np.testing.assert_array_equal(a, b)  # a copy, bit for bit
    assert max(np.abs(a - b).max() for a, b in zip(_leaves(fresh.params), _leaves(loaded))) > 0.1

    # End to end: one step at a learning rate far too small to move anything visibly.
    config.update(dict(num_steps=1, learning_rate=1e-12, weight_decay=0.0))
    train.train_and_evaluate(config, str(tmp_path / "ft"), corpus)
    tuned, step = train.restore_latest(str(tmp_path / "ft"), config)
    assert step == 1 and int(tuned.step) == 1
    for a, b in zip(_leaves(tuned.params), _leaves(source.params)):
        np.testing.assert_allclose(a, b, atol=1e-9)  # lr 1e-12 x Adam steps of about 1


def test_init_from_of_another_model_is_refused(ext_run, tmp_path):
    with pytest.raises(ValueError, match="not a pe_jax workdir"):
        train.validate(tiny(init_from=str(tmp_path / "nowhere")))
    config = tiny(d_model=64)
    like = train.create_state(config, train.model_config(config)).params
    with pytest.raises(ValueError, match="holds parameters of another model"):
        train.params_from(os.path.join(ext_run, "base"), like)


def test_extension_job_quick_writes_every_method_both_ways(ext_run):
    workdir = ext_run
    entries = json.load(open(os.path.join(workdir, "extension.json")))
    assert {(e["method"], e["finetuned"]) for e in entries} == {
        (m, ft) for m in extension.METHODS for ft in (False, True)}
    for e in entries:
        assert [r["length"] for r in e["results"]] == [16, 64]  # quick: 1L and 4L
        assert all(np.isfinite(r["loss"]) for r in e["results"])
    ft_config = evaluate.load_config(os.path.join(workdir, "ft_yarn"))
    assert ft_config.seq_len == 64 and ft_config.init_from.endswith("base")
    assert json.loads(ft_config.rope_scaling)["original_max_position_embeddings"] == 16
    table = open(os.path.join(workdir, "extension.md")).read()
    assert "| longrope |" in table and "Beat plain RoPE at 4L (64) without fine-tune" in table


def test_longrope_long_factor_is_the_yarn_divisor_per_pair():
    config = extension_config.get_config()  # Dh 32 -> 16 pairs; L0 128, s 4
    divisors = extension.yarn_divisors(config)
    # YaRN at L0 = 128, base 1e4, Dh 32: ramp from pair 0 to pair 6 (cd(1) = 5.24 -> 6).
    assert len(divisors) == 16 and divisors[0] == 1.0 and divisors[6:] == [4.0] * 10
    np.testing.assert_allclose(divisors[3], 1 / (0.5 / 4 + 0.5), rtol=1e-6)  # half way


def test_shipped_extension_configs_load_and_validate():
    for module in (finetune_config, extension_config):
        train.validate(module.get_config())
    config = extension_config.get_config()
    assert extension.method_list(config) == list(extension.METHODS)
    for method in extension.METHODS:
        ft = extension.finetune_config(config, method, "/unused")
        assert (ft.seq_len, ft.rope_max_position_embeddings) == (512, 128)
        ft.init_from = ""  # no base run here
        train.validate(ft)
