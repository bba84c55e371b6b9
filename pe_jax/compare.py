"""The main job: train every chosen scheme identically, evaluate each past its
training length, and write the comparison table, JSON and plot.
"""

from __future__ import annotations

import json
import os
import time

from absl import logging

from pe_jax import data, evaluate, metrics, schemes, train


def scheme_list(config) -> list[str]:
    names = [n.strip() for n in str(config.schemes).split(",") if n.strip()]
    if not names:
        raise ValueError(f"config.schemes names no scheme: {config.schemes!r}")
    for name in names:
        schemes.get(name)  # unknown -> ValueError listing the known ones
    if len(set(names)) != len(names):
        raise ValueError(f"config.schemes repeats a scheme: {config.schemes!r}")
    return names


def eval_lengths(config) -> list[int]:
    multiples = evaluate.parse_lengths(str(config.eval_multiples))
    return [config.seq_len * k for k in multiples]


def table_markdown(results: dict[str, list[dict]], seq_len: int, tokens_per_s: dict) -> str:
    """Scheme x length losses (nats/token) plus loss(8L)/loss(L) and training tok/s."""
    lengths = sorted({r["length"] for rs in results.values() for r in rs})
    header = ["scheme"] + [f"{n} ({n // seq_len}L)" for n in lengths]
    header += ["loss(8L)/loss(L)", "train tok/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, rs in results.items():
        by_length = {r["length"]: r for r in rs}
        cells = [name]
        for n in lengths:
            r = by_length.get(n, {})
            cells.append(f"{r['loss']:.3f}" if "loss" in r else "n/a")
        ratio = loss_ratio(rs, seq_len, 8)
        cells.append(f"{ratio:.3f}" if ratio is not None else "n/a")
        cells.append(f"{tokens_per_s.get(name, float('nan')):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def loss_ratio(results: list[dict], seq_len: int, multiple: int) -> float | None:
    by_length = {r["length"]: r.get("loss") for r in results}
    base, far = by_length.get(seq_len), by_length.get(seq_len * multiple)
    return far / base if base is not None and far is not None else None


def run(config, workdir: str) -> dict[str, list[dict]]:
    names = scheme_list(config)
    lengths = eval_lengths(config)
    os.makedirs(workdir, exist_ok=True)
    corpus = data.load(config.data, text_key=config.data_text_key,
                       data_dir=config.data_dir or None)
    logging.info("main job: %s on %s, train length %d, eval lengths %s",
                 ",".join(names), corpus.name, config.seq_len, lengths)

    results, tokens_per_s = {}, {}
    started = time.perf_counter()
    for index, name in enumerate(names):
        sub = config.copy_and_resolve_references()
        with sub.unlocked():
            sub.pe = name
            sub.job = "train"
        subdir = os.path.join(workdir, name)
        logging.info("scheme %d/%d: %s (elapsed %s)", index + 1, len(names), name,
                     metrics.format_seconds(time.perf_counter() - started))
        last = train.train_and_evaluate(sub, subdir, corpus)
        tokens_per_s[name] = last.get("tokens_per_s") or _last_logged_rate(subdir)
        results[name] = evaluate.evaluate_workdir(subdir, lengths, corpus)

    summary = [
        {"scheme": name, "results": rs, "train_tokens_per_s": tokens_per_s[name],
         "ratio_8L": loss_ratio(rs, config.seq_len, 8)}
        for name, rs in results.items()
    ]
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table = table_markdown(results, config.seq_len, tokens_per_s)
    elapsed = time.perf_counter() - started
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(f"# Extrapolation on {corpus.name}: loss (nats/token) by evaluation length\n\n")
        f.write(f"Trained at L = {config.seq_len} for {config.num_steps} steps of "
                f"{config.batch_size} sequences; {config.eval_tokens} held-out tokens per "
                f"length, non-overlapping windows. Wall time {metrics.format_seconds(elapsed)}."
                f"\n\n")
        f.write(table)
    evaluate.plot(results, os.path.join(workdir, "comparison.png"), config.seq_len)
    print(table, flush=True)
    logging.info("main job done in %s; results in %s", metrics.format_seconds(elapsed), workdir)
    return results


def _last_logged_rate(workdir: str) -> float | None:
    """Training throughput of a run that was already finished before this call."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    rates = [json.loads(line).get("tokens_per_s") for line in open(path) if line.strip()]
    rates = [r for r in rates if r]
    return sorted(rates)[len(rates) // 2] if rates else None
