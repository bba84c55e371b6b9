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
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from pe_jax import data, model, schemes, train
from pe_jax.schemes import rope

# Scaling rules whose arithmetic reads the pre-training length L0.
_NEED_ORIGINAL_LENGTH = ("dynamic", "yarn", "llama3", "longrope", "su")  # su: old longrope


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


def with_rope_scaling(config, rope_scaling) -> tuple[ml_collections.ConfigDict, str]:
    """A copy of ``config`` whose RoPE uses ``rope_scaling``, and the rule's name.

    ``rope_scaling`` is a Hugging Face ``rope_scaling`` dict, or its JSON text; it replaces
    the config's own. Where the dict omits ``original_max_position_embeddings`` and the
    rule reads it (dynamic, yarn, llama3, longrope), it is set to the model's context:
    ``rope_max_position_embeddings``, else ``seq_len`` (the training length). Scaling
    changes no parameter, so a checkpoint restores under the returned config.

    Raises:
      ValueError: bad JSON, not a dict, a scheme without RoPE scaling, or a rule the
        scaling module rejects; the message quotes the value.
    """
    text = rope_scaling if isinstance(rope_scaling, str) else json.dumps(rope_scaling)
    if isinstance(rope_scaling, str):
        try:
            rope_scaling = json.loads(rope_scaling)
        except json.JSONDecodeError as error:
            raise ValueError(f"rope_scaling {text!r} is not valid JSON: {error}") from None
    if not isinstance(rope_scaling, dict):
        raise ValueError(f"rope_scaling must be a JSON object (a dict), got {text!r}")

    options = schemes.get(config.pe).make_options(config)
    if not isinstance(options, rope.RopeOptions):
        raise ValueError(
            f"rope_scaling {text!r} applies to the 'rope' scheme only; this run uses "
            f"pe={config.pe!r}"
        )
    rope_scaling = dict(rope_scaling)
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if rope_type in _NEED_ORIGINAL_LENGTH:
        rope_scaling.setdefault(
            "original_max_position_embeddings", options.scaling.max_position_embeddings
        )

    scaled = config.copy_and_resolve_references()
    with scaled.unlocked():
        scaled.rope_scaling = json.dumps(rope_scaling)
    try:
        scaled_options = schemes.get(scaled.pe).make_options(scaled)
    except ValueError as error:
        raise ValueError(f"rope_scaling {text!r}: {error}") from None
    return scaled, scaled_options.scaling.rope_type


PROTOCOLS = ("nonoverlapping", "sliding")
# Lengths above this are evaluated with blockwise attention (no L x L array).
BLOCKWISE_ABOVE = 2048
BLOCK_SIZE = 512


def _loss_sum_fn(apply_fn, block_size: int):
    @jax.jit
    def loss_sum(params, batch):
        logits = apply_fn({"params": params}, batch["inputs"], batch["positions"],
                          block_size=block_size)
        nll = train.cross_entropy(logits, batch["targets"])
        return jnp.sum(nll * batch["weights"])

    return loss_sum


def sliding_windows(tokens: np.ndarray, length: int, stride: int, num_tokens: int) -> dict:
    """Windows of ``length`` every ``stride`` tokens; each target is scored once.

    The first window scores all its targets; every later one only its last ``stride``
    (the ALiBi paper's sliding evaluation), so each scored token sees at least
    ``length - stride`` tokens of left context. ``weights`` marks the scored targets.
    """
    if not 0 < stride <= length:
        raise ValueError(f"stride must be in [1, length={length}], got {stride}")
    count = max(1, (num_tokens - length) // stride + 1)
    needed = (count - 1) * stride + length + 1
    if len(tokens) < needed:
        raise ValueError(f"validation split has {len(tokens)} tokens; needs {needed}")
    starts = np.arange(count) * stride
    index = starts[:, None] + np.arange(length)
    weights = np.zeros((count, length), np.float32)
    weights[0] = 1.0
    weights[1:, length - stride :] = 1.0
    return {
        "inputs": tokens[index].astype(np.int32),
        "targets": tokens[index + 1].astype(np.int32),
        "positions": np.ascontiguousarray(
            np.broadcast_to(np.arange(length, dtype=np.int32), (count, length))
        ),
        "weights": weights,
    }


def evaluate_lengths(
    config,
    params,
    val_tokens: np.ndarray,
    lengths: list[int],
    protocol: str = "nonoverlapping",
    stride: int | None = None,
) -> list[dict]:
    """``[{"length", "loss", "ppl"} or {"length", "error"}]``, one per length.

    ``protocol="sliding"`` scores with windows every ``stride`` tokens (default a
    quarter of the length); lengths above ``BLOCKWISE_ABOVE`` use blockwise attention.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    mcfg = train.model_config(config)
    apply_fn = model.Decoder(mcfg).apply
    num_tokens = int(config.eval_tokens)
    if num_tokens <= 0:
        raise ValueError(f"eval_tokens must be positive, got {num_tokens}")
    results = []
    for length in lengths:
        try:
            model.check_length(mcfg, length - 1)
            if protocol == "sliding":
                windows = sliding_windows(val_tokens, length, stride or max(1, length // 4),
                                          num_tokens)
            else:
                windows = data.eval_windows(val_tokens, length, num_tokens)
                windows["weights"] = np.ones(windows["targets"].shape, np.float32)
        except ValueError as error:
            logging.info("length %d: not applicable: %s", length, error)
            results.append({"length": length, "error": str(error)})
            continue

        loss_sum = _loss_sum_fn(apply_fn, BLOCK_SIZE if length > BLOCKWISE_ABOVE else 0)
        per_batch = max(1, int(config.eval_batch_tokens) // length)
        total = 0.0
        for start in range(0, len(windows["inputs"]), per_batch):
            batch = {k: v[start : start + per_batch] for k, v in windows.items()}
            total += float(loss_sum(params, batch))
        loss = total / float(windows["weights"].sum())
        if not math.isfinite(loss):
            raise FloatingPointError(f"evaluation loss is {loss} at length {length}")
        results.append({"length": length, "loss": loss, "ppl": math.exp(loss)})
        logging.info("length %d (%s): loss %.4f nats/token, ppl %.3f", length, protocol,
                     loss, math.exp(loss))
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


def evaluate_workdir(
    workdir: str,
    lengths: list[int],
    corpus: data.Corpus | None = None,
    rope_scaling: str | dict | None = None,
    restored: tuple[Any, int] | None = None,
    protocol: str = "nonoverlapping",
    stride: int | None = None,
):
    """Evaluate the latest checkpoint of ``workdir``; write eval.json and eval.png.

    With ``rope_scaling`` (see ``with_rope_scaling``) the checkpoint is evaluated with that
    RoPE scaling rule applied and no training, and the files are
    ``eval_<rope_type>.json`` and ``eval_<rope_type>.png`` instead. ``restored`` is
    ``(params, step)`` of that checkpoint when the caller already holds them (scaling
    changes no parameter, so one restore serves every rule). The sliding protocol
    writes ``eval_sliding.json`` (or ``eval_<rope_type>_sliding.json``).
    """
    config = load_config(workdir)
    stem, label = "eval", config.pe
    if rope_scaling is not None:
        config, rope_type = with_rope_scaling(config, rope_scaling)
        stem, label = f"eval_{rope_type}", f"{config.pe} + {rope_type}"
    params, step = restored or train.restore_params(workdir, config)
    corpus = corpus or data.load(config.data, text_key=config.data_text_key,
                                 data_dir=config.data_dir or None)
    if protocol == "sliding":
        stem += "_sliding"
    logging.info("evaluating %s (%s) at step %d", workdir, label, step)
    results = evaluate_lengths(config, params, corpus.val, lengths, protocol, stride)
    with open(os.path.join(workdir, f"{stem}.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot({label: results}, os.path.join(workdir, f"{stem}.png"), config.seq_len)
    return results
