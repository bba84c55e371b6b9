"""Evaluation past the training length: loss and perplexity per evaluation length.

Every length scores the same held-out target tokens, cut into non-overlapping windows
that each start at position 0. A scheme that cannot encode a length (a learned table
shorter than it) gets an entry with the reason instead of a number: no index is ever
clipped.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from pe_jax import data, model, train


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{workdir!r} has no config.json: is it a pe_jax training workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"lengths must be comma-separated integers, got {text!r}") from None
    bad = [n for n in lengths if n <= 0]
    if not lengths or bad:
        raise ValueError(f"lengths must be positive integers, got {text!r}")
    return lengths


def _loss_sum_fn(apply_fn):
    @jax.jit
    def loss_sum(params, batch):
        logits = apply_fn({"params": params}, batch["inputs"], batch["positions"])
        return jnp.sum(train.cross_entropy(logits, batch["targets"]))

    return loss_sum


def evaluate_lengths(
    config, params, val_tokens: np.ndarray, lengths: list[int]
) -> list[dict]:
    """``[{"length", "loss", "ppl"} or {"length", "error"}]``, one per length."""
    mcfg = train.model_config(config)
    loss_sum = _loss_sum_fn(model.Decoder(mcfg).apply)
    num_tokens = int(config.eval_tokens)
    if num_tokens <= 0:
        raise ValueError(f"eval_tokens must be positive, got {num_tokens}")
    results = []
    for length in lengths:
        try:
            model.check_length(mcfg, length - 1)
            windows = data.eval_windows(val_tokens, length, num_tokens)
        except ValueError as error:
            logging.info("length %d: not applicable: %s", length, error)
            results.append({"length": length, "error": str(error)})
            continue

        per_batch = max(1, int(config.eval_batch_tokens) // length)
        total = 0.0
        for start in range(0, len(windows["inputs"]), per_batch):
            batch = {k: v[start : start + per_batch] for k, v in windows.items()}
            total += float(loss_sum(params, batch))
        loss = total / windows["targets"].size
        if not math.isfinite(loss):
            raise FloatingPointError(f"evaluation loss is {loss} at length {length}")
        results.append({"length": length, "loss": loss, "ppl": math.exp(loss)})
        logging.info("length %d: loss %.4f nats/token, ppl %.3f", length, loss, math.exp(loss))
    return results


def plot(results_by_name: dict[str, list[dict]], path: str, train_length: int | None = None):
    """Loss against evaluation length, one line per run; missing points are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, results in results_by_name.items():
        points = [(r["length"], r["loss"]) for r in results if "loss" in r]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=name)
    if train_length:
        ax.axvline(train_length, color="gray", linestyle=":", label="training length")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_workdir(workdir: str, lengths: list[int], corpus: data.Corpus | None = None):
    """Evaluate the latest checkpoint of ``workdir``; write eval.json and eval.png."""
    config = load_config(workdir)
    state, step = train.restore_latest(workdir, config)
    corpus = corpus or data.load(config.data, text_key=config.data_text_key,
                                 data_dir=config.data_dir or None)
    logging.info("evaluating %s (%s) at step %d", workdir, config.pe, step)
    results = evaluate_lengths(config, state.params, corpus.val, lengths)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot({config.pe: results}, os.path.join(workdir, "eval.png"), config.seq_len)
    return results
