"""RoPE context extension: one model, every scaling rule, without and with a short fine-tune.

``run(config, workdir)`` trains one plain-RoPE model at L = ``seq_len`` into W/base (or
resumes it), then for each rule of ``config.extension_methods``:

1. evaluates the base checkpoint with the rule applied and no training (W/base/eval.json
   for "none", W/base/eval_<rope_type>.json for the rest);
2. fine-tunes the base parameters at ``extension_factor`` x L with the rule applied, as
   in position interpolation (Chen et al. 2023, arXiv:2306.15595), into W/ft_<method>,
   and evaluates that (W/ft_<method>/eval.json).

Every evaluation scores the same held-out tokens at ``extension_multiples`` x L. The job
writes W/extension.md (method x length, both blocks), W/extension.json (a list of
``{method, finetuned, rope_scaling, results}``) and logs which rules beat plain RoPE at
``extension_factor`` x L, before and after the fine-tune. A rerun resumes unfinished
runs and skips finished ones.

The rules, all with factor s = ``extension_factor`` and L0 = L (the training length):

* ``none``: plain RoPE; its fine-tune is plain RoPE trained at s x L (the baseline of
  the position-interpolation paper).
* ``linear``: position interpolation, every frequency / s.
* ``ntk``: static NTK-aware base change.
* ``dynamic``: dynamic NTK, measured against L (``rope_max_position_embeddings`` = L in
  the fine-tune too, so the rule is the same function of length before and after it).
* ``yarn``: YaRN with its default ramp (beta 32 / 1) and attention factor.
* ``llama3``: the Llama 3.1 rule with low_freq_factor 1, high_freq_factor 4.
* ``longrope``: short_factor all 1 (plain RoPE up to L); long_factor = YaRN's per-pair
  divisors for the same s and L0, i.e. ``plain_inv_freq / yarn_inv_freq``. LongRoPE
  searches its factors and seeds the search with the PI, NTK and YaRN ones (Ding et al.
  2024, arXiv:2402.13753, section 3.2); no search is run here, so this row is that seed
  with LongRoPE's short/long switch at L and its attention factor sqrt(1 + ln s / ln L).
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
import numpy as np
from absl import logging

from pe_jax import data, evaluate, metrics, scaling, train
from pe_jax.schemes import rope

METHODS = ("none", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope")


def method_list(config) -> list[str]:
    names = [n.strip() for n in str(config.extension_methods).split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"config.extension_methods must name distinct methods among {', '.join(METHODS)}; "
            f"got {config.extension_methods!r}"
        )
    return names


def yarn_divisors(config) -> list[float]:
    """Per rotary pair, plain / YaRN inverse frequency for factor s and L0 = seq_len."""
    d_rot = rope.rotary_dim(config.d_model // config.num_heads, config.rope_fraction)
    yarn = scaling.RopeScaling(
        rope_type="yarn",
        factor=float(config.extension_factor),
        original_max_position_embeddings=int(config.seq_len),
    )
    plain_Dh2 = np.asarray(scaling.default_inv_freq(d_rot, config.rope_theta), np.float64)
    yarn_Dh2 = np.asarray(scaling.inv_freq_and_scale(d_rot, config.rope_theta, yarn)[0],
                          np.float64)
    return [round(float(x), 6) for x in plain_Dh2 / yarn_Dh2]


def method_scaling(config, method: str) -> dict | None:
    """The Hugging Face rope_scaling dict of ``method`` (None for plain RoPE)."""
    s, l0 = float(config.extension_factor), int(config.seq_len)
    if method == "none":
        return None
    if method in ("linear", "ntk", "dynamic"):
        return {"rope_type": method, "factor": s}
    if method == "yarn":
        return {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": l0}
    if method == "llama3":
        return {"rope_type": "llama3", "factor": s, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": l0}
    if method == "longrope":
        long_factor = yarn_divisors(config)
        return {"rope_type": "longrope", "factor": s, "original_max_position_embeddings": l0,
                "short_factor": [1.0] * len(long_factor), "long_factor": long_factor}
    raise ValueError(f"unknown extension method {method!r}; known: {', '.join(METHODS)}")


def quick(config) -> ml_collections.ConfigDict:
    """A copy shrunk to a CPU smoke run: tiny model, a few steps per run, 1L and 4L only.

    Its time is nearly all compilation (about 70 small programs): a minute or two on 2
    free CPU cores.
    """
    small = config.copy_and_resolve_references()
    with small.unlocked():
        small.update(dict(
            d_model=32, num_layers=1, num_heads=2, seq_len=16, batch_size=4, num_steps=4,
            warmup_steps=1, checkpoint_every=4, log_every=2, eval_tokens=256,
            eval_batch_tokens=512, finetune_steps=2, finetune_warmup_steps=1,
            finetune_batch_size=2, extension_multiples="1,4", extension_quick=False,
        ))
    return small


def base_config(config) -> ml_collections.ConfigDict:
    """The plain-RoPE training run at L."""
    base = config.copy_and_resolve_references()
    with base.unlocked():
        base.job = "train"
    return base


def finetune_config(config, method: str, base_dir: str) -> ml_collections.ConfigDict:
    """The short fine-tune of ``base_dir`` at s x L with ``method`` applied."""
    ft = config.copy_and_resolve_references()
    with ft.unlocked():
        ft.job = "train"
        ft.init_from = base_dir
        ft.rope_max_position_embeddings = int(config.seq_len)
        ft.seq_len = int(config.seq_len) * int(config.extension_factor)
        ft.batch_size = int(config.finetune_batch_size)
        ft.num_steps = int(config.finetune_steps)
        ft.learning_rate = float(config.finetune_learning_rate)
        ft.warmup_steps = int(config.finetune_warmup_steps)
        ft.checkpoint_every = min(int(config.checkpoint_every), int(config.finetune_steps))
        ft.log_every = min(int(config.log_every), int(config.finetune_steps))
    rope_scaling = method_scaling(config, method)
    if rope_scaling is not None:
        ft, _ = evaluate.with_rope_scaling(ft, rope_scaling)
    return ft


def beating_plain(entries: list[dict], finetuned: bool, length: int) -> list[str]:
    """Methods whose loss at ``length`` is below plain RoPE's, in the same block."""
    losses = {
        e["method"]: next((r.get("loss") for r in e["results"] if r["length"] == length), None)
        for e in entries
        if e["finetuned"] == finetuned
    }
    plain = losses.get("none")
    if plain is None:
        return []
    return [m for m, loss in losses.items() if m != "none" and loss is not None and loss < plain]


def table_markdown(entries: list[dict], seq_len: int, lengths: list[int]) -> str:
    """One row per method: losses without fine-tune, then with it (nats/token)."""
    header = ["method"]
    header += [f"{n} ({n // seq_len}L)" for n in lengths]
    header += [f"ft {n} ({n // seq_len}L)" for n in lengths]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(e["method"], e["finetuned"]): e for e in entries}
    for method in dict.fromkeys(e["method"] for e in entries):
        cells = [method]
        for finetuned in (False, True):
            entry = by_key.get((method, finetuned), {})
            results = {r["length"]: r for r in entry.get("results", [])}
            for n in lengths:
                r = results.get(n, {})
                cells.append(f"{r['loss']:.3f}" if "loss" in r else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(config, workdir: str) -> list[dict]:
    if config.get("extension_quick"):
        config = quick(config)
    if config.pe != "rope" or config.rope_scaling:
        raise ValueError(
            "the extension job trains plain RoPE: it needs pe='rope' and an empty "
            f"rope_scaling, got pe={config.pe!r}, rope_scaling={config.rope_scaling!r}"
        )
    methods = method_list(config)
    factor = int(config.extension_factor)
    if factor < 1 or factor != config.extension_factor:
        raise ValueError(f"config.extension_factor must be an integer >= 1, got "
                         f"{config.extension_factor!r}")
    lengths = [config.seq_len * k for k in evaluate.parse_lengths(str(config.extension_multiples))]
    for method in methods:  # a bad rule fails here, before any training
        finetune_config(config, method, os.path.join(workdir, "base"))
    os.makedirs(workdir, exist_ok=True)
    corpus = data.load(config.data, text_key=config.data_text_key,
                       data_dir=config.data_dir or None)
    logging.info("extension job: %s on %s, L = %d, factor %d, eval lengths %s",
                 ",".join(methods), corpus.name, config.seq_len, factor, lengths)
    started = time.perf_counter()

    base_dir = os.path.join(workdir, "base")
    train.train_and_evaluate(base_config(config), base_dir, corpus)

    entries = []
    base_params = train.restore_params(base_dir, evaluate.load_config(base_dir))
    for method in methods:
        rope_scaling = method_scaling(config, method)
        logging.info("%s without fine-tune (elapsed %s)", method,
                     metrics.format_seconds(time.perf_counter() - started))
        results = evaluate.evaluate_workdir(base_dir, lengths, corpus, rope_scaling=rope_scaling,
                                            restored=base_params)
        entries.append({"method": method, "finetuned": False, "rope_scaling": rope_scaling,
                        "results": results})

    for method in methods:
        rope_scaling = method_scaling(config, method)
        logging.info("%s: fine-tune at %d (elapsed %s)", method, config.seq_len * factor,
                     metrics.format_seconds(time.perf_counter() - started))
        ft_dir = os.path.join(workdir, f"ft_{method}")
        train.train_and_evaluate(finetune_config(config, method, base_dir), ft_dir, corpus)
        results = evaluate.evaluate_workdir(ft_dir, lengths, corpus)
        entries.append({"method": method, "finetuned": True, "rope_scaling": rope_scaling,
                        "results": results})

    with open(os.path.join(workdir, "extension.json"), "w") as f:
        json.dump(entries, f, indent=1)
    at = config.seq_len * factor
    beats = {ft: beating_plain(entries, ft, at) for ft in (False, True)}
    elapsed = metrics.format_seconds(time.perf_counter() - started)
    table = table_markdown(entries, config.seq_len, lengths)
    with open(os.path.join(workdir, "extension.md"), "w") as f:
        f.write(f"# RoPE context extension on {corpus.name}: loss (nats/token) by length\n\n")
        f.write(
            f"One RoPE model trained at L = {config.seq_len} for {config.num_steps} steps; "
            f"every rule with factor {factor}. \"ft\" columns: after {config.finetune_steps} "
            f"fine-tune steps at {at} ({config.finetune_batch_size} sequences, peak learning "
            f"rate {config.finetune_learning_rate}) with the rule applied. "
            f"{config.eval_tokens} held-out tokens per length. Wall time {elapsed}.\n\n"
        )
        f.write(table)
        f.write(f"\nBeat plain RoPE at {factor}L ({at}) without fine-tune: "
                f"{', '.join(beats[False]) or 'none'}.\n")
        f.write(f"Beat plain RoPE at {factor}L ({at}) after fine-tune (vs plain fine-tuned): "
                f"{', '.join(beats[True]) or 'none'}.\n")
    logging.info("extension table (nats/token):\n%s", table)
    logging.info("beat plain RoPE at %dL without fine-tune: %s", factor,
                 ", ".join(beats[False]) or "none")
    logging.info("beat plain RoPE at %dL after fine-tune: %s", factor,
                 ", ".join(beats[True]) or "none")
    logging.info("extension job done in %s; results in %s", elapsed, workdir)
    return entries
