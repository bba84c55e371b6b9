"""Training, checkpoint resume, evaluation and the entry points, on tiny sizes."""

import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from configs import compare as compare_config
from configs import default as default_config
from pe_jax import compare, data, evaluate, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**overrides) -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.update(dict(d_model=32, num_layers=1, num_heads=2, seq_len=16, batch_size=4,
                       num_steps=2, warmup_steps=1, checkpoint_every=1, log_every=1,
                       eval_tokens=256, eval_batch_tokens=256))
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    return data.Corpus("random", rng.integers(0, 256, 20000, dtype=np.uint8),
                       rng.integers(0, 256, 4000, dtype=np.uint8))


def test_two_steps_then_resume_continues_from_the_checkpoint(tmp_path, corpus, caplog):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny(), workdir, corpus)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
    state2, step = train.restore_latest(workdir, tiny())
    assert step == 2

    caplog.set_level("INFO")
    train.train_and_evaluate(tiny(num_steps=4), workdir, corpus)
    assert "resumed from step 2" in caplog.text
    state4, step = train.restore_latest(workdir, tiny(num_steps=4))
    assert step == 4 and int(state4.step) == 4

    # Resuming must equal never stopping: same batches, same optimizer state.
    straight = str(tmp_path / "straight")
    train.train_and_evaluate(tiny(num_steps=4), straight, corpus)
    state_straight, _ = train.restore_latest(straight, tiny(num_steps=4))
    for a, b in zip(jax_leaves(state4.params), jax_leaves(state_straight.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # identical math, same order
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    # Throughput and MFU (against the float32 matmul speed measured at the start) are
    # logged for timed steps; the first step of each run compiles and is not timed.
    timed = [x for x in lines if "tokens_per_s" in x]
    assert [x["step"] for x in timed] == [2, 4]
    assert all(x["tokens_per_s"] > 0 and 0.0 < x["mfu"] <= 1.0 for x in timed), timed


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_workdir_of_another_config_is_refused(tmp_path, corpus):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny(num_steps=1), workdir, corpus)
    with pytest.raises(ValueError, match=r"another configuration \(pe: 'rope' there, 'alibi'"):
        train.train_and_evaluate(tiny(num_steps=1, pe="alibi"), workdir, corpus)


@pytest.mark.parametrize(
    "overrides, message",
    [({"pe": "nope"}, "unknown positional scheme 'nope'"),
     ({"seq_len": 0}, "seq_len must be a positive integer, got 0"),
     ({"num_steps": -3}, "num_steps must be a positive integer, got -3"),
     ({"batch_size": 0}, "batch_size"),
     ({"d_model": 36, "num_heads": 4, "pe": "rope"}, "head_dim 9"),
     ({"compute_dtype": "float8"}, "compute_dtype must be one of")],
)
def test_bad_config_values_are_named(tmp_path, corpus, overrides, message):
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(tiny(**overrides), str(tmp_path / "run"), corpus)


def test_evaluation_reports_learned_past_its_table_as_not_applicable(tmp_path, corpus):
    workdir = str(tmp_path / "learned")
    train.train_and_evaluate(tiny(pe="learned"), workdir, corpus)
    results = evaluate.evaluate_workdir(workdir, [16, 32], corpus)
    assert set(results[0]) == {"length", "loss", "ppl"} and results[0]["length"] == 16
    assert np.isclose(results[0]["ppl"], np.exp(results[0]["loss"]))
    assert set(results[1]) == {"length", "error"} and "table of 16" in results[1]["error"]
    assert json.load(open(os.path.join(workdir, "eval.json"))) == results
    assert os.path.getsize(os.path.join(workdir, "eval.png")) > 0


def test_every_length_scores_the_same_tokens():
    tokens = np.arange(1000, dtype=np.uint8)
    a, b = data.eval_windows(tokens, 16, 256), data.eval_windows(tokens, 64, 256)
    np.testing.assert_array_equal(a["targets"].ravel(), b["targets"].ravel())
    assert a["positions"][3].tolist() == list(range(16))


def test_compare_job_writes_table_json_and_plot(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(data, "load", lambda *a, **k: corpus)
    config = compare_config.get_config()
    config.update(dict(tiny(), job="compare", schemes="none,learned,alibi",
                       eval_multiples="1,2"))
    workdir = str(tmp_path / "cmp")
    compare.run(config, workdir)
    table = open(os.path.join(workdir, "comparison.md")).read()
    assert "| learned |" in table and "n/a" in table  # learned cannot run at 2L
    summary = json.load(open(os.path.join(workdir, "comparison.json")))
    assert [s["scheme"] for s in summary] == ["none", "learned", "alibi"]
    for name in ("none", "learned", "alibi"):
        per_scheme = json.load(open(os.path.join(workdir, name, "eval.json")))
        assert [r["length"] for r in per_scheme] == [16, 32]
    assert os.path.getsize(os.path.join(workdir, "comparison.png")) > 0


def test_every_shipped_config_loads_and_validates():
    for module in (default_config, compare_config):
        config = module.get_config()
        train.validate(config)
    compare.scheme_list(compare_config.get_config())


def _cli(args, workdir, **kw):
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}",
         f"--config={os.path.join(ROOT, 'configs/default.py')}", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw,
    )


def test_sigkill_then_rerun_resumes_from_the_last_checkpoint(tmp_path):
    """The contract: kill -9 mid-run, rerun the same command, it resumes and finishes."""
    workdir = str(tmp_path / "killed")
    text = os.path.join(tmp_path, "corpus.txt")
    with open(text, "wb") as f:
        f.write(bytes(np.random.default_rng(0).integers(32, 127, 30000, dtype=np.uint8)))
    args = [f"--config.data=text:{text}", "--config.d_model=32", "--config.num_layers=1",
            "--config.seq_len=16", "--config.batch_size=4", "--config.num_steps=1500",
            "--config.checkpoint_every=20", "--config.log_every=20", "--config.eval_tokens=256"]
    proc = _cli(args, workdir)
    ckpt = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = [int(s) for s in os.listdir(ckpt) if s.isdigit()] if os.path.isdir(ckpt) else []
        if steps and max(steps) >= 40:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    rerun = _cli(args, workdir)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-3000:]
    assert "resumed from step" in out
    resumed_at = int(out.split("resumed from step ")[1].split()[0])
    assert 40 <= resumed_at < 1500
    steps = [json.loads(x)["step"] for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert steps[-1] == 1500



def test_randomized_positions_train_and_let_learned_run_past_seq_len(tmp_path, corpus):
    """Ruoss et al.: train on random sorted positions from 0..63, evaluate plainly at 64."""
    workdir = str(tmp_path / "rand")
    config = tiny(pe="learned", random_positions=True, random_positions_max=64)
    train.train_and_evaluate(config, workdir, corpus)
    state, _ = train.restore_latest(workdir, config)
    assert state.params["scheme"]["table"].shape[0] == 64  # the table covers the range
    results = evaluate.evaluate_workdir(workdir, [16, 64, 128], corpus)
    assert "loss" in results[1] and "error" in results[2]
    with pytest.raises(ValueError, match="random_positions_max must be >= seq_len 16, got 8"):
        train.validate(tiny(random_positions=True, random_positions_max=8))
