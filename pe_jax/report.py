"""The measured report: REFERENCE.md's claims checked against runs, with computed verdicts.

``run(workdir, quick=False)`` trains (or finds, or resumes) one model per scheme and seed
under ``W/runs/seed<s>/<scheme>``, evaluates each at 1, 2, 4, 8 and 16 x L under both
protocols (non-overlapping windows and a sliding window of stride L/4), and writes
``W/REPORT.md`` with PNG figures beside it. Every verdict line is computed from the
numbers in the same section by a rule stated next to it; none is written by hand.

Axis legend: S relative distances, K frequency pairs, B batch, L positions, V vocabulary.

Sections: extrapolation (claims 1-5, 16, 20), relative ability (a shared position shift),
depth (linear probes of absolute position per layer, claim 17 and the fade of additive
codes), low precision (claims 22-23 from the audit; claim 24 from four bfloat16 runs at
L = 512 with float32 versus bfloat16-built tables), RoPE long-term decay (claims 8-9),
context extension (W/extension.md when present), cost (claim 6; from bench/'s results
when the checkout has them, else from the runs' logs), and the summary table.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from pe_jax import data, evaluate, metrics, model, precision, probe, train
from pe_jax.schemes import alibi as alibi_scheme
from pe_jax.schemes import t5 as t5_scheme

MULTIPLES = (1, 2, 4, 8, 16)
PROTOCOLS = ("nonoverlapping", "sliding")
# FIRE is left out of the full default: its MLP over every (i, j) pair trains at ~1k
# tokens/s on 2 CPU cores against ~7k for the others (add it with --schemes).
FULL_SCHEMES = ("none", "sinusoidal", "learned", "rope", "alibi", "t5", "kerple_log")
QUICK_SCHEMES = ("none", "sinusoidal", "alibi")
# Schemes whose logits depend on positions only through differences (expected invariant
# under a shared shift). FIRE divides by max(threshold, query position), sinusoidal and
# learned add absolute codes: those are expected to change.
EXPECTED_INVARIANT = {"none": True, "sinusoidal": False, "learned": False, "rope": True,
                      "alibi": True, "t5": True, "kerple_log": True, "kerple_power": True,
                      "fire": False, "xpos": True, "shaw": True}
# Claim 24: models trained in bfloat16 with float32 versus bfloat16-built tables.
PRECISION_SCHEMES = ("rope", "sinusoidal")
TABLE_DTYPES = ("float32", "bfloat16")
BF16_EXACT = 256  # bfloat16 holds every integer up to 256, only some past it
# Schemes that add an absolute code to the embeddings (the depth probe's "fade" rule).
ADDITIVE = ("sinusoidal", "learned", "scaled_sinusoidal")
SHIFT = 100  # the shared position shift of the relative-ability check
INVARIANT_ATOL = 1e-3  # float32 angles near 100 rad carry ~1e-5 error; logits move < 1e-3
HELD, NOT_HELD, NOT_MEASURED = "held", "did not hold at this scale", "not measured"


# ---------------------------------------------------------------------------------------
# Configurations.


def report_config(quick: bool, schemes: str = "", seeds: str = "") -> ml_collections.ConfigDict:
    """The training configuration of every run, with the report's own keys.

    Full: configs/default.py's model (d_model 128, 2 layers, 4 heads, L = 128) for 200
    steps, 4096 held-out tokens per length, seven schemes, three seeds: about 2 minutes
    per run on 2 shared CPU cores, ~45 minutes in all. Quick: d_model 32, 1 layer, L = 16,
    20 steps, one seed, three schemes, and claim 24 at L = 32 for 4 steps.
    ``schemes`` and ``seeds`` (comma-separated) replace the mode's defaults when given.
    """
    from configs import default

    c = default.get_config()
    if quick:
        c.update(dict(d_model=32, num_layers=1, num_heads=2, seq_len=16, batch_size=8,
                      num_steps=20, warmup_steps=2, checkpoint_every=20, log_every=5,
                      eval_tokens=256, eval_batch_tokens=1024))
        c.report_schemes = ",".join(QUICK_SCHEMES)
        c.report_seeds = "0"
        c.report_probe_windows = 4
        c.report_precision = dict(seq_len=32, batch_size=4, num_steps=4, windows=2,
                                  schemes="rope")
    else:
        c.update(dict(num_steps=200, warmup_steps=20, checkpoint_every=100, log_every=25,
                      eval_tokens=4096, eval_batch_tokens=16384))
        c.report_schemes = ",".join(FULL_SCHEMES)
        c.report_seeds = "0,1,2"
        c.report_probe_windows = 64  # 8192 tokens: 4096 fit the probe, 4096 score it
        # Claim 24 needs positions past 256: four bfloat16 runs at L = 512.
        c.report_precision = dict(seq_len=512, batch_size=8, num_steps=200, windows=32,
                                  schemes=",".join(PRECISION_SCHEMES))
    c.report_schemes = schemes or c.report_schemes
    c.report_seeds = seeds or c.report_seeds
    if not _names(c.report_schemes):
        raise ValueError(f"--schemes names no scheme: {c.report_schemes!r}")
    bad = [s for s in _names(c.report_seeds) if not s.lstrip("-").isdigit()]
    if bad or not _names(c.report_seeds):
        raise ValueError(f"--seeds must be comma-separated integers, got {c.report_seeds!r}")
    return c


def _names(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


def _run_config(config, scheme: str, seed: int) -> ml_collections.ConfigDict:
    sub = config.copy_and_resolve_references()
    with sub.unlocked():
        sub.pe, sub.seed, sub.job = scheme, seed, "train"
        for key in [k for k in sub.keys() if k.startswith("report_")]:
            del sub[key]
    return sub


# ---------------------------------------------------------------------------------------
# Runs and their evaluations (cached per checkpoint step, so a rerun only reads them).


def train_and_measure(config, workdir: str, corpus: data.Corpus) -> dict:
    """``{seed: {scheme: {"eval": {protocol: results}, "shift": {...}, "tokens_per_s"}}}``."""
    seeds = [int(s) for s in _names(config.report_seeds)]
    lengths = [config.seq_len * k for k in MULTIPLES]
    runs: dict[int, dict[str, dict]] = {}
    started = time.perf_counter()
    for seed in seeds:
        runs[seed] = {}
        for scheme in _names(config.report_schemes):
            sub = _run_config(config, scheme, seed)
            rundir = os.path.join(workdir, "runs", f"seed{seed}", scheme)
            logging.info("report: %s seed %d (elapsed %s)", scheme, seed,
                         metrics.format_seconds(time.perf_counter() - started))
            train.train_and_evaluate(sub, rundir, corpus)
            runs[seed][scheme] = _measure(sub, rundir, corpus, lengths, first_seed=seed == seeds[0],
                                          probe_windows=int(config.report_probe_windows))
    return runs


def _measure(config, rundir: str, corpus: data.Corpus, lengths: list[int], first_seed: bool,
             probe_windows: int = 0):
    cache_path = os.path.join(rundir, "report_eval.json")
    params, step = train.restore_params(rundir, config)
    key = {"step": step, "lengths": lengths, "eval_tokens": int(config.eval_tokens)}
    cached = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    if cached.get("key") != key:
        cached = {"key": key}
    for protocol in PROTOCOLS:
        if protocol not in cached:
            cached[protocol] = evaluate.evaluate_lengths(
                config, params, corpus.val, lengths, protocol=protocol,
                stride=None)  # sliding: stride = length / 4 at every length
    if first_seed and "shift" not in cached:
        cached["shift"] = shift_change(config, params, corpus.val)
    if first_seed and probe_windows and "probe" not in cached:
        cached["probe"] = probe.position_probe(
            train.model_config(config), params, corpus.val, int(config.seq_len), probe_windows)
    with open(cache_path, "w") as f:
        json.dump(cached, f, indent=1)
    return {"eval": {p: cached[p] for p in PROTOCOLS}, "shift": cached.get("shift"),
            "probe": cached.get("probe"), "tokens_per_s": median_tokens_per_s(rundir)}


def median_tokens_per_s(rundir: str) -> float | None:
    path = os.path.join(rundir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    rates = [json.loads(x).get("tokens_per_s") for x in open(path) if x.strip()]
    rates = sorted(r for r in rates if r)
    return float(rates[len(rates) // 2]) if rates else None


def shift_change(config, params, val_tokens: np.ndarray, shift: int = SHIFT) -> dict:
    """Max abs change of the whole model's logits when every position moves by ``shift``.

    Windows of L/2 held-out tokens at positions 0..L/2-1, then at ``shift``..: a scheme
    that cannot encode the shifted positions (a learned table of L rows) is shifted by
    the most it can take, L/2, and the entry says so.
    """
    mcfg = train.model_config(config)
    length = max(2, config.seq_len // 2)
    try:
        model.check_length(mcfg, length - 1 + shift)
    except ValueError:
        shift = config.seq_len - length
    tokens_BxL = jnp.asarray(val_tokens[: 4 * length].reshape(4, length), jnp.int32)
    pos_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens_BxL.shape)
    apply = jax.jit(model.Decoder(mcfg).apply)
    base_BxLxV = apply({"params": params}, tokens_BxL, pos_BxL)
    moved_BxLxV = apply({"params": params}, tokens_BxL, pos_BxL + shift)
    change = float(jnp.max(jnp.abs(moved_BxLxV - base_BxLxV)))
    return {"shift": int(shift), "length": int(length), "max_abs_change": change,
            "max_abs_logit": float(jnp.max(jnp.abs(base_BxLxV)))}


def table_precision_runs(config, workdir: str, corpus: data.Corpus) -> dict:
    """Claim 24: ``{scheme: {table_dtype: per-position mean loss (list of L floats)}}``.

    RoPE and sinusoidal, each trained twice with bfloat16 compute at
    ``report_precision.seq_len`` (past 256), once with pe_jax's float32 tables and once
    with tables built in bfloat16 (``pe_table_dtype``, the shipped fault); each model is
    scored with its own tables on the same held-out windows. Cached per checkpoint step.
    """
    opts = config.report_precision
    L = int(opts.seq_len)
    out: dict[str, dict[str, list[float]]] = {}
    for scheme in _names(opts.schemes):
        out[scheme] = {}
        for table in TABLE_DTYPES:
            sub = _run_config(config, scheme, int(_names(config.report_seeds)[0]))
            sub.update(dict(seq_len=L, batch_size=int(opts.batch_size),
                            num_steps=int(opts.num_steps), checkpoint_every=int(opts.num_steps),
                            compute_dtype="bfloat16", pe_table_dtype=table))
            rundir = os.path.join(workdir, "runs", "precision", f"{scheme}-{table}")
            logging.info("report: claim 24, %s with %s tables", scheme, table)
            train.train_and_evaluate(sub, rundir, corpus)
            params, step = train.restore_params(rundir, sub)
            cache_path = os.path.join(rundir, "report_positions.json")
            key = {"step": step, "windows": int(opts.windows)}
            cached = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
            if cached.get("key") != key:
                cached = {"key": key, "loss_by_position": per_position_loss(
                    sub, params, corpus.val, L, int(opts.windows))}
                with open(cache_path, "w") as f:
                    json.dump(cached, f)
            out[scheme][table] = cached["loss_by_position"]
    return out


def per_position_loss(config, params, val_tokens: np.ndarray, length: int,
                      windows: int) -> list[float]:
    """Mean loss at each position 0..length-1 over ``windows`` held-out windows."""
    batch = data.eval_windows(val_tokens, length, windows * length)
    decoder = model.Decoder(train.model_config(config))

    @jax.jit
    def token_loss(params, inputs, positions, targets):
        return train.cross_entropy(decoder.apply({"params": params}, inputs, positions), targets)

    losses = [np.asarray(token_loss(params, batch["inputs"][i:i + 8],
                                    batch["positions"][i:i + 8], batch["targets"][i:i + 8]))
              for i in range(0, len(batch["inputs"]), 8)]
    return np.concatenate(losses).mean(axis=0).astype(float).tolist()


def precision_gaps(by_position: dict) -> dict[str, dict[str, float]]:
    """Per scheme: mean (bf16-table loss - float32-table loss) below and past 256."""
    gaps = {}
    for scheme, tables in by_position.items():
        diff = np.asarray(tables["bfloat16"]) - np.asarray(tables["float32"])
        low, high = diff[:BF16_EXACT + 1], diff[BF16_EXACT + 1:]
        gaps[scheme] = {"below": float(low.mean()),
                        "past": float(high.mean()) if high.size else float("nan")}
    return gaps


BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def bench_results(name: str):
    """``bench/<name>`` of this checkout, parsed; None where it is absent (an installed
    wheel has no bench/, a fresh checkout may not have run one)."""
    path = os.path.join(BENCH_DIR, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def cost_rates(runs: dict, seeds: list[int], schemes: list[str]) -> tuple[dict, str]:
    """Training tokens/s of each scheme relative to NoPE, and where they come from:
    ``bench/results.json`` when it holds NoPE ("bench"), else the runs' own logs."""
    rows = bench_results("results.json")
    if rows and any(r["scheme"] == "none" for r in rows):
        return {r["scheme"]: 1.0 / (1.0 + r["overhead_vs_none"]) for r in rows
                if r["scheme"] in schemes}, "bench"
    logged = {sc: [runs[seed][sc]["tokens_per_s"] for seed in seeds
                   if runs[seed][sc]["tokens_per_s"]] for sc in schemes}
    logged = {sc: float(np.median(v)) for sc, v in logged.items() if v}
    if "none" not in logged:
        return {}, "training logs"
    return {sc: v / logged["none"] for sc, v in logged.items()}, "training logs"


def cost_memory_lines(schemes: list[str]) -> list[str]:
    """Peak RSS of long evaluation and cached-decoding speed, from bench/ when present."""
    lines = []
    memory = bench_results("long_eval_memory.json")
    if memory:
        lengths = sorted({r["length"] for r in memory})
        longest = lengths[-1]
        none = {r["length"]: r["peak_rss_mib"] for r in memory if r["scheme"] == "none"}
        lines += ["Peak resident memory (MiB) of blockwise evaluation of the main job's "
                  "model at each length (`bench/long_eval_memory.py`), and at the longest "
                  "relative to NoPE:", "",
                  "| scheme | " + " | ".join(f"{n // 1024}K" if n >= 1024 else str(n)
                                          for n in lengths)
                  + f" | {longest // 1024}K vs none |",
                  "|---|" + "---|" * (len(lengths) + 1)]
        for sc in dict.fromkeys(r["scheme"] for r in memory):
            cells = {r["length"]: r["peak_rss_mib"] for r in memory if r["scheme"] == sc}
            rel = (f"{cells[longest] / none[longest]:.2f}"
                   if longest in cells and longest in none else "n/a")
            lines.append(f"| {sc} | " + " | ".join(
                f"{cells[n]:.0f}" if n in cells else "-" for n in lengths) + f" | {rel} |")
        lines.append("")
    speed = bench_results("decode_speed.json")
    if speed:
        positions = sorted({r["position"] for r in speed})
        lines += ["Cached decoding, batch 1, one token a step (`bench/decode_speed.py`), "
                  "tokens/s at each position:", "",
                  "| scheme | " + " | ".join(str(p) for p in positions) + " |",
                  "|---|" + "---|" * len(positions)]
        for sc in dict.fromkeys(r["scheme"] for r in speed):
            cells = {r["position"]: r["tokens_per_s"] for r in speed if r["scheme"] == sc}
            lines.append(f"| {sc} | " + " | ".join(
                f"{cells[p]:.0f}" if p in cells else "-" for p in positions) + " |")
        lines.append("")
    return lines


# ---------------------------------------------------------------------------------------
# Statistics over seeds.


def _loss(results: list[dict], length: int) -> float | None:
    for r in results:
        if r["length"] == length:
            return r.get("loss")
    return None


def ratios(runs: dict, scheme: str, protocol: str, seq_len: int) -> dict[int, list[float]]:
    """Per multiple k, the per-seed ratios loss(kL)/loss(L) (empty where not applicable)."""
    out = {}
    for k in MULTIPLES:
        values = []
        for by_scheme in runs.values():
            if scheme in by_scheme:
                results = by_scheme[scheme]["eval"][protocol]
                base, far = _loss(results, seq_len), _loss(results, seq_len * k)
                if base is not None and far is not None:
                    values.append(far / base)
        out[k] = values
    return out


def losses(runs: dict, scheme: str, protocol: str, length: int) -> list[float]:
    values = []
    for by_scheme in runs.values():
        if scheme in by_scheme:
            loss = _loss(by_scheme[scheme]["eval"][protocol], length)
            if loss is not None:
                values.append(loss)
    return values


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


# ---------------------------------------------------------------------------------------
# Verdicts: each returns (verdict, the numbers it read).


def _verdict(ok: bool) -> str:
    return HELD if ok else NOT_HELD


def extrapolation_verdicts(runs: dict, seq_len: int) -> list[tuple[str, str, str, str]]:
    """``[(claim number, claim, rule, verdict with numbers)]`` for claims 1-5, 16, 20."""
    schemes = {s for by in runs.values() for s in by}

    def r(scheme, k, protocol="nonoverlapping"):
        return _mean(ratios(runs, scheme, protocol, seq_len)[k])

    out = []

    def add(number, claim, rule, needed, compute):
        if not set(needed) <= schemes:
            missing = ", ".join(sorted(set(needed) - schemes))
            out.append((number, claim, rule, f"{NOT_MEASURED} (schemes not run: {missing})"))
            return
        ok, numbers = compute()
        out.append((number, claim, rule, f"{_verdict(ok)} ({numbers})"))

    def claim1():
        sin4, sin16 = r("sinusoidal", 4), r("sinusoidal", 16)
        learned_past = [_loss(by["learned"]["eval"]["nonoverlapping"], seq_len * k)
                        for by in runs.values() for k in MULTIPLES[1:]]
        refused = all(x is None for x in learned_past)
        ok = sin4 > 1.5 and sin16 >= sin4 and refused
        return ok, (f"sinusoidal ratio 4x {sin4:.3f}, 16x {sin16:.3f}; learned past L: "
                    f"{'refused' if refused else 'evaluated'}")

    add("1", "Sinusoidal and learned absolute codes do not extrapolate (ALiBi §2)",
        "sinusoidal ratio > 1.5 at 4x and not falling to 16x; learned refuses lengths past "
        "its table", ("sinusoidal", "learned"), claim1)

    def claim2():
        pairs = [(k, r("rope", k), r("sinusoidal", k)) for k in (4, 8, 16)]
        ok = all(1 < a < b for _, a, b in pairs)
        return ok, "; ".join(f"{k}x rope {a:.3f} vs sin {b:.3f}" for k, a, b in pairs)

    add("2", "RoPE extrapolates a little better than sinusoidal but still degrades (ALiBi T2/T3)",
        "1 < rope ratio < sinusoidal ratio at 4x, 8x, 16x", ("rope", "sinusoidal"), claim2)

    def claim3():
        ppl1 = _mean([math.exp(x) for x in losses(runs, "alibi", "nonoverlapping", seq_len)])
        ppl16 = _mean([math.exp(x) for x in losses(runs, "alibi", "nonoverlapping",
                                                   16 * seq_len)])
        return ppl16 / ppl1 <= 1.05, f"ppl(16x)/ppl(1x) = {ppl16 / ppl1:.3f}"

    add("3", "ALiBi extrapolates to 16x (ALiBi T2/T3)", "ALiBi ppl(16x)/ppl(1x) <= 1.05",
        ("alibi",), claim3)

    def claim4():
        t2, t16, a16 = r("t5", 2), r("t5", 16), r("alibi", 16)
        return t2 <= 1.05 and t16 > a16, (f"t5 ratio 2x {t2:.3f}, 16x {t16:.3f}; "
                                          f"alibi 16x {a16:.3f}")

    add("4", "T5's bias extrapolates ~2x, then drifts (ALiBi §2)",
        "t5 ratio at 2x <= 1.05 and t5 ratio at 16x > ALiBi's", ("t5", "alibi"), claim4)

    def claim5():
        def gain(protocol):
            return _mean([a - b for a, b in zip(
                losses(runs, "alibi", protocol, seq_len),
                losses(runs, "alibi", protocol, 4 * seq_len))])

        g_non, g_sl = gain("nonoverlapping"), gain("sliding")
        sin4_sl = r("sinusoidal", 4, "sliding")
        ok = g_non > 0 and abs(g_sl) < 0.5 * g_non and sin4_sl > 1.5
        return ok, (f"ALiBi loss gain 1x->4x: non-overlapping {g_non:+.4f}, sliding "
                    f"{g_sl:+.4f} nats; sinusoidal sliding ratio 4x {sin4_sl:.3f}")

    add("5", "ALiBi's long-evaluation gain is the early-token curse (ALiBi App. B)",
        "ALiBi's 1x->4x gain > 0 without overlap and shrinks below half of it with a sliding "
        "window; sinusoidal sliding ratio at 4x still > 1.5", ("alibi", "sinusoidal"), claim5)

    def claim16():
        nope = _mean(losses(runs, "none", "nonoverlapping", seq_len))
        rope_ = _mean(losses(runs, "rope", "nonoverlapping", seq_len))
        return nope <= 1.10 * rope_, f"loss at L: NoPE {nope:.3f}, RoPE {rope_:.3f}"

    add("16", "NoPE is competitive in distribution (Haviv et al.)",
        "NoPE loss at L within 10% of RoPE's", ("none", "rope"), claim16)

    def claim20():
        k16, a16 = r("kerple_log", 16), r("alibi", 16)
        ok, numbers = k16 <= 1.1 and k16 <= a16, f"ratio 16x: kerple_log {k16:.3f}"
        if "fire" in schemes:
            f16 = r("fire", 16)
            ok, numbers = ok and f16 <= 1.1, numbers + f", fire {f16:.3f}"
        else:
            numbers += ", fire not run: this verdict covers KERPLE-log only"
        return ok, numbers + f", alibi {a16:.3f}"

    add("20", "KERPLE-log and FIRE extrapolate like ALiBi (Chi et al.; Li et al.)",
        "ratio at 16x <= 1.1 for each one run and kerple_log <= ALiBi",
        ("kerple_log", "alibi"), claim20)
    return out


def precision_verdicts(audit: dict) -> list[tuple[str, str, str, str]]:
    bf16, fp16 = audit["positions"]["bfloat16"], audit["positions"]["float16"]
    n_bf, n_fp = (bf16["distinct_among_0_to_n_minus_1"]["4096"],
                  fp16["distinct_among_0_to_n_minus_1"]["4096"])
    ok22 = bf16["exact_up_to"] == 256 and n_bf == 769 and n_fp == 3073
    rows = audit["table_rows_distinct_0_to_4095"]
    cos_err = max(audit["rope"]["table_naive_bf16"])
    ok23 = rows["float32_angles"] == 4096 and rows["bfloat16_angles"] < 2048 and cos_err > 1.0
    return [
        ("22", "bfloat16 positions collide past 256 (pure)",
         "bf16 exact up to 256; 769 distinct bf16 values among 0..4095; 3073 in float16",
         f"{_verdict(ok22)} (bf16 exact up to {bf16['exact_up_to']}, {n_bf} distinct; "
         f"fp16 {n_fp} distinct)"),
        ("23", "float32 tables avoid collisions (pure)",
         "4096 distinct f32-angle rows among 0..4095; bf16-built rows < 2048 and cos/sin "
         "error > 1", f"{_verdict(ok23)} (f32 rows {rows['float32_angles']}, bf16-built "
         f"rows {rows['bfloat16_angles']}, max bf16-built cos/sin error {cos_err:.2f})"),
    ]


# ---------------------------------------------------------------------------------------
# Pure RoPE figures (claims 8 and 9).


def rope_decay_bound(distances_S: np.ndarray, head_dim: int = 64, base: float = 1e4):
    """RoFormer §3.4.3: (1/(d/2)) sum_j |S_j(s)|, S_j(s) = sum_{k<j} exp(i s theta_k)."""
    theta_K = base ** (-np.arange(0, head_dim, 2) / head_dim)
    phase_SxK = np.exp(1j * distances_S[:, None].astype(np.float64) * theta_K[None])
    partial_SxK = np.cumsum(phase_SxK, axis=1)
    return np.abs(partial_SxK).sum(axis=1) / (head_dim // 2)


def decay_verdict(distances_S, bound_small, bound_large) -> tuple[bool, str]:
    """Decreasing trend (last-quarter mean below the first 16 distances' mean) for base 1e4,
    and base 1e6 above base 1e4 on average over the far half."""
    near, far = slice(1, 17), distances_S >= distances_S[-1] * 3 // 4
    half = distances_S >= distances_S[-1] // 2
    dec = bound_small[far].mean() < bound_small[near].mean()
    slower = bound_large[half].mean() > bound_small[half].mean()
    return dec and slower, (
        f"base 1e4: mean {bound_small[near].mean():.2f} at s in [1,16], "
        f"{bound_small[far].mean():.2f} in the last quarter; far-half mean base 1e6 "
        f"{bound_large[half].mean():.2f} vs base 1e4 {bound_small[half].mean():.2f}")


def pi_bound_ratio(head_dim: int = 128, base: float = 1e4, length: int = 2048,
                   seed: int = 0) -> dict:
    """Position interpolation (Chen et al. 2023, Thm 2.1) measured with random h.

    a(s) = Re sum_k h_k exp(i s theta_k). Interpolation error: |a(s) - linear interp of
    the integer neighbours| at half-integers in [0, L]. Extrapolation: max |a(s)| on
    integers in [L, 4L]. Returns both and their ratio.
    """
    rng = np.random.default_rng(seed)
    theta_K = base ** (-np.arange(0, head_dim, 2) / head_dim)
    h_K = rng.normal(size=theta_K.size) + 1j * rng.normal(size=theta_K.size)

    def a(s):
        return np.real(np.exp(1j * np.asarray(s, np.float64)[:, None] * theta_K) @ h_K)

    ints = np.arange(length + 1)
    a_int = a(ints)
    halves = ints[:-1] + 0.5
    interp_err = float(np.max(np.abs(a(halves) - 0.5 * (a_int[:-1] + a_int[1:]))))
    extrap = float(np.max(np.abs(a(np.arange(length, 4 * length + 1)))))
    return {"interpolation_error": interp_err, "extrapolation_max": extrap,
            "ratio": extrap / interp_err, "head_dim": head_dim, "length": length}


# ---------------------------------------------------------------------------------------
# Low precision per scheme (pure): what each scheme's positional quantity loses when it is
# built in bfloat16 instead of float32/float64, over positions 0..4095.


def low_precision_by_scheme(audit: dict, n: int = 4096) -> dict[str, str]:
    bands = audit["bands"]
    far = bands.index("[1K,4K)")
    sin_err, rope_err = (audit["sinusoidal"]["table_naive_bf16"][far],
                         audit["rope"]["table_naive_bf16"][far])
    sin_ok, rope_ok = (audit["sinusoidal"]["table_pe_jax"][far],
                       audit["rope"]["table_pe_jax"][far])
    distance = np.arange(n)
    slopes = np.asarray(alibi_scheme.slopes(4), np.float64)  # the default 4 heads
    exact = slopes[:, None] * distance[None]
    built = precision.round_to(precision.round_to(slopes, "bfloat16")[:, None]
                               * precision.round_to(distance, "bfloat16")[None], "bfloat16")
    alibi_err = float(np.max(np.abs(built - exact)))
    alibi_distinct = int(np.unique(precision.round_to(distance, "bfloat16")).size)
    buckets_exact = np.asarray(t5_scheme.bucket(
        jnp.asarray(-distance, jnp.int32), num_buckets=32, max_distance=128))
    buckets_bf = np.asarray(t5_scheme.bucket(
        jnp.asarray(-precision.round_to(distance, "bfloat16"), jnp.int32),
        num_buckets=32, max_distance=128))
    t5_moved = int(np.sum(buckets_exact != buckets_bf))
    return {
        "sinusoidal": f"bf16-built table err {sin_err:.2f} at [1K,4K); f32 angles "
                      f"{sin_ok:.1e}",
        "rope": f"bf16-built cos/sin err {rope_err:.2f} at [1K,4K); f32 angles {rope_ok:.1e}",
        "alibi": f"bf16-built bias err up to {alibi_err:.1f} logits by 4K ({alibi_distinct} "
                 f"distinct distances of {n})",
        "t5": f"{t5_moved} of {n} distances change bucket when rounded to bf16",
        "kerple_log": f"reads distances: {alibi_distinct} distinct of {n} in bf16, as ALiBi",
        "fire": f"reads distances: {alibi_distinct} distinct of {n} in bf16, as ALiBi",
        "learned": "integer row lookup: exact in any dtype",
        "none": "no positional values",
    }


# ---------------------------------------------------------------------------------------
# Figures.


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ratios(runs: dict, seq_len: int, path: str) -> None:
    plt = _plt()
    schemes = list(next(iter(runs.values())))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, protocol in zip(axes, PROTOCOLS):
        for scheme in schemes:
            by_k = ratios(runs, scheme, protocol, seq_len)
            ks = [k for k in MULTIPLES if by_k[k]]
            if not ks:
                continue
            means = [np.mean(by_k[k]) for k in ks]
            spread = [np.std(by_k[k]) for k in ks]
            ax.errorbar(ks, means, yerr=spread, marker="o", capsize=3, label=scheme)
        ax.axhline(1.0, color="gray", linestyle=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(MULTIPLES, [f"{k}x" for k in MULTIPLES])
        ax.set_xlabel("evaluation length / training length")
        ax.set_title(protocol if protocol == "nonoverlapping" else "sliding (stride L/4)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("loss(kL) / loss(L)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_decay(distances_S, curves: dict[str, np.ndarray], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, values in curves.items():
        ax.plot(distances_S, values, label=label, linewidth=1)
    ax.set_xlabel("relative distance s")
    ax.set_ylabel("(1/(d/2)) sum_j |S_j(s)|")
    ax.set_title("RoPE long-term decay, d = 64 (RoFormer §3.4.3)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_probe(probes: dict[str, dict], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for scheme, p in probes.items():
        ax.plot(range(len(p["r2"])), p["r2"], marker="o", label=scheme)
    shuffled = max(max(p["shuffled"]) for p in probes.values())
    ax.axhline(shuffled, color="gray", linestyle=":", label="shuffled baseline (max)")
    ax.set_xticks(range(len(next(iter(probes.values()))["r2"])))
    ax.set_xlabel("layer boundary (0 = embeddings)")
    ax.set_ylabel("probe R^2 of absolute position")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_positions(by_position: dict, path: str, smooth: int = 16) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(by_position), figsize=(5 * len(by_position), 3.8),
                             squeeze=False)
    for ax, (scheme, tables) in zip(axes[0], by_position.items()):
        for table, losses in tables.items():
            values = np.asarray(losses)
            width = max(1, min(smooth, len(values) // 4))
            kernel = np.ones(width) / width
            ax.plot(np.convolve(values, kernel, mode="valid"), label=f"{table} tables")
        ax.axvline(BF16_EXACT, color="gray", linestyle=":")
        ax.set_title(f"{scheme}, bfloat16 compute", fontsize=10)
        ax.set_xlabel(f"position (mean over {smooth})")
        ax.set_ylabel("held-out loss (nats/byte)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost(rel: dict[str, float], path: str, reference: str = "none") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = list(rel)
    ax.bar(names, [rel[n] for n in names], color="C0")
    ax.axhline(1.0, color="gray", linestyle=":")
    ax.set_ylabel(f"training tokens/s relative to {reference}")
    ax.tick_params(axis="x", rotation=30)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# The report.


def _verdict_lines(rows) -> list[str]:
    return [f"- **Claim {n}** — {claim}. Rule: {rule}. **Verdict: {verdict}**"
            for n, claim, rule, verdict in rows]


def run(workdir: str, quick: bool = False, corpus: data.Corpus | None = None,
        schemes: str = "", seeds: str = "") -> str:
    """Train or find the runs, measure, and write ``workdir/REPORT.md``; returns its text.

    ``schemes`` and ``seeds`` (comma-separated) override the mode's defaults.
    """
    started = time.perf_counter()
    config = report_config(quick, schemes, seeds)
    os.makedirs(workdir, exist_ok=True)
    corpus = corpus or data.load(config.data, text_key=config.data_text_key,
                                 data_dir=config.data_dir or None)
    L = int(config.seq_len)
    runs = train_and_measure(config, workdir, corpus)
    seeds = list(runs)
    schemes = list(runs[seeds[0]])
    md = [
        "# pe_jax measured report",
        "",
        f"Generated by `python report.py --workdir={workdir}{' --quick' if quick else ''}`. "
        "Every verdict below is computed from the numbers of its section by the rule "
        "printed beside it; none is written by hand. \"held\" means the rule passed on "
        f"these runs; \"{NOT_HELD}\" means it failed on these small CPU models, not that "
        "the paper is wrong.",
        "",
        f"Setting: byte-level decoder on `{corpus.name}`, d_model {config.d_model}, "
        f"{config.num_layers} layers, {config.num_heads} heads, trained at L = {L} for "
        f"{config.num_steps} steps of {config.batch_size} sequences (peak lr "
        f"{config.learning_rate}), seeds {', '.join(map(str, seeds))}; "
        f"{config.eval_tokens} held-out tokens scored per length. Mode: "
        f"{'quick (a smoke run: tiny model, numbers are not meaningful)' if quick else 'full'}.",
        "",
    ]

    # a. Extrapolation.
    md += ["## Extrapolation", "",
           "Claims 1-5, 16 and 20 of REFERENCE.md. Loss in nats/byte at kL and the ratio "
           "loss(kL)/loss(L); mean ± standard deviation over seeds where there are several. "
           "Non-overlapping: windows each start at position 0. Sliding: windows of kL every "
           "kL/4 tokens, each scoring only its last kL/4 targets (ALiBi App. B).", ""]
    for protocol in PROTOCOLS:
        md += [f"### {protocol}", "",
               "| scheme | " + " | ".join(f"loss {k}L" for k in MULTIPLES) + " | "
               + " | ".join(f"ratio {k}L" for k in MULTIPLES[1:]) + " |",
               "|" + "---|" * (1 + 2 * len(MULTIPLES) - 1)]
        for scheme in schemes:
            by_k = ratios(runs, scheme, protocol, L)
            cells = [_cell(losses(runs, scheme, protocol, k * L)) for k in MULTIPLES]
            cells += [_cell(by_k[k]) for k in MULTIPLES[1:]]
            md.append(f"| {scheme} | " + " | ".join(cells) + " |")
        md.append("")
    plot_ratios(runs, L, os.path.join(workdir, "extrapolation.png"))
    md += ["![loss ratio by length](extrapolation.png)", ""]
    ext_rows = extrapolation_verdicts(runs, L)
    md += _verdict_lines(ext_rows) + [""]

    # b. Relative ability.
    md += ["## Relative ability", "",
           f"Whole-model logits of the seed-{seeds[0]} model on 4 held-out windows of L/2 "
           f"tokens, at positions 0.. and again with every position moved by +{SHIFT} (a "
           "learned table takes only the shift it can encode). A scheme counts as invariant "
           f"when the max abs change is <= {INVARIANT_ATOL:g}. Expected invariant: schemes "
           "that see positions only through differences (NoPE, RoPE, ALiBi, T5, KERPLE); "
           "not invariant: absolute codes (sinusoidal, learned) and FIRE (it divides by the "
           "query position).", "",
           "| scheme | shift | max abs logit change | max abs logit | invariant | expected |",
           "|---|---|---|---|---|---|"]
    matches, shift_rows = [], {}
    for scheme in schemes:
        s = runs[seeds[0]][scheme]["shift"]
        invariant = s["max_abs_change"] <= INVARIANT_ATOL
        shift_rows[scheme] = (s, invariant)
        expected = EXPECTED_INVARIANT.get(scheme)
        if expected is not None:
            matches.append((scheme, invariant == expected))
        md.append(f"| {scheme} | +{s['shift']} | {s['max_abs_change']:.2e} | "
                  f"{s['max_abs_logit']:.2f} | {'yes' if invariant else 'no'} | "
                  f"{'n/a' if expected is None else ('yes' if expected else 'no')} |")
    wrong = [s for s, ok in matches if not ok]
    md += ["", f"- **Relative ability** — relative schemes are shift-invariant as a whole "
           "model, absolute ones are not. Rule: every scheme's measured invariance equals its "
           f"expected one. **Verdict: {_verdict(not wrong)}** "
           f"({'all match' if not wrong else 'mismatch: ' + ', '.join(wrong)})", ""]

    # Depth: linear probes of absolute position.
    probes = {sc: runs[seeds[0]][sc]["probe"] for sc in schemes
              if runs[seeds[0]][sc].get("probe")}
    if probes:
        first = next(iter(probes.values()))
        n = len(first["r2"])
        md += ["## Depth", "",
               f"Claims 16-17 and the additive-code fade (`pe_jax.probe`). A ridge probe "
               f"predicts each token's absolute position from the residual stream of the "
               f"seed-{seeds[0]} model at every layer boundary (0: embeddings plus any "
               f"additive code; k: after block k), fitted on {first['windows'] // 2} "
               f"held-out windows of L = {first['length']} and scored (R^2) on "
               f"{first['windows'] - first['windows'] // 2} others. Shuffled: the same "
               "probe fitted to permuted positions (no position to find).", "",
               "| scheme | " + " | ".join(
                   ["R^2 embeddings"] + [f"R^2 after block {k}" for k in range(1, n)])
               + " | shuffled (max) |",
               "|" + "---|" * (n + 2)]
        for sc, p in probes.items():
            md.append(f"| {sc} | " + " | ".join(f"{v:.3f}" for v in p["r2"])
                      + f" | {max(p['shuffled']):.3f} |")
        plot_probe(probes, os.path.join(workdir, "depth_probe.png"))
        md += ["", "![position probe by depth](depth_probe.png)", ""]
        if "none" in probes:
            p = probes["none"]
            best, base = max(p["r2"][1:]), max(p["shuffled"])
            ok17 = best >= 0.5 and best - base >= 0.4
            md += [f"- **Claim 17** — a causal NoPE model learns absolute position. Rule: "
                   "NoPE's best probe R^2 after a block is >= 0.5 and exceeds the shuffled "
                   f"baseline by >= 0.4. **Verdict: {_verdict(ok17)}** (best {best:.3f}, "
                   f"shuffled {base:.3f}, embeddings {p['r2'][0]:.3f})", ""]
        faded = {sc: probes[sc]["r2"] for sc in ADDITIVE if sc in probes}
        if faded:
            ok_fade = all(r2[-1] < r2[0] for r2 in faded.values())
            md += ["- **Additive codes fade through depth** (the brief's claim). Rule: for "
                   "every additive scheme the probe R^2 after the last block is below its "
                   f"R^2 at the embeddings. **Verdict: {_verdict(ok_fade)}** ("
                   + "; ".join(f"{sc} {r2[0]:.3f} -> {r2[-1]:.3f}" for sc, r2 in faded.items())
                   + ")", ""]

    # c. Low precision.
    audit = precision.write_audit(workdir)
    md += ["## Low precision", "",
           "Claims 22-23 (pure numpy, `pe_jax.precision`): integer positions and RoPE / "
           "sinusoidal tables built in bfloat16 versus pe_jax's float32 angles. Figure: "
           "`audit.png`; numbers: `audit.json`.", "", "```", precision.format_audit(audit),
           "```", "", "![precision audit](audit.png)", ""]
    md += _verdict_lines(precision_verdicts(audit)) + [""]
    lowprec = low_precision_by_scheme(audit)

    popts = config.report_precision
    by_position = table_precision_runs(config, workdir, corpus)
    gaps = precision_gaps(by_position)
    plot_positions(by_position, os.path.join(workdir, "precision_positions.png"))
    md += ["### Training with bfloat16-built tables", "",
           f"Claim 24: {', '.join(by_position)} trained with bfloat16 compute at L = "
           f"{popts.seq_len} ({popts.num_steps} steps of {popts.batch_size} sequences, seed "
           f"{seeds[0]}), once with pe_jax's float32 tables and once with tables built in "
           "bfloat16 (`pe_table_dtype=bfloat16`, the fault), each scored with its own "
           f"tables on the same {popts.windows} held-out windows. Gap = mean loss of the "
           f"bf16-table model minus the float32-table model, over positions 0..{BF16_EXACT} "
           "(every integer exact in bfloat16) and past it.", "",
           f"| scheme | gap, positions <= {BF16_EXACT} | gap, positions > {BF16_EXACT} |",
           "|---|---|---|"]
    md += [f"| {sc} | {g['below']:+.4f} | {g['past']:+.4f} |" for sc, g in gaps.items()]
    md += ["", "![per-position loss, float32 vs bfloat16 tables](precision_positions.png)", ""]
    ok24 = all(np.isfinite(g["past"]) and g["past"] >= 0.01 and abs(g["below"]) < g["past"] / 2
               for g in gaps.values())
    md += [f"- **Claim 24** — bf16-built tables hurt training only past position "
           f"{BF16_EXACT}. Rule: for every scheme the gap past {BF16_EXACT} is >= 0.01 nats "
           "and more than twice the size of the gap below it. "
           f"**Verdict: {_verdict(ok24)}** ("
           + "; ".join(f"{sc} {g['below']:+.4f} / {g['past']:+.4f}" for sc, g in gaps.items())
           + ")", ""]

    # d. RoPE long-term decay.
    distances_S = np.arange(0, 1025)
    curves = {f"base {b:g}": rope_decay_bound(distances_S, 64, b) for b in (1e4, 1e6)}
    plot_decay(distances_S, curves, os.path.join(workdir, "rope_decay.png"))
    ok8, numbers8 = decay_verdict(distances_S, curves["base 10000"], curves["base 1e+06"])
    pi = pi_bound_ratio()
    md += ["## RoPE long-term decay", "",
           "Claim 8 (pure): RoFormer §3.4.3's bound (1/(d/2)) Σ_j |S_j(s)| with "
           "S_j(s) = Σ_{k<j} exp(i s θ_k), d = 64, for s = 0..1024.", "",
           "![RoPE decay bound](rope_decay.png)", "",
           f"- **Claim 8** — RoPE's relative upper bound decays with distance; a larger base "
           "decays more slowly. Rule: base-1e4 mean over the last quarter of distances < mean "
           "over s in [1,16], and base-1e6 mean over the far half > base-1e4's. "
           f"**Verdict: {_verdict(ok8)}** ({numbers8})", "",
           "Claim 9 (pure): position interpolation's bound. a(s) = Re Σ_k h_k exp(i s θ_k) "
           f"with random complex h, d = {pi['head_dim']}, L = {pi['length']}: max error of "
           "linear interpolation between integer neighbours at half-integers in [0, L] "
           f"= {pi['interpolation_error']:.3f}; max |a(s)| on [L, 4L] = "
           f"{pi['extrapolation_max']:.2f}. (The paper's ~600x compares the theorem's two "
           "bounds; this measures one random h, so the rule asks only for the hundreds.)", "",
           f"- **Claim 9** — interpolation is ~600x better bounded than extrapolation (PI "
           "Thm 2.1). Rule: measured ratio >= 100. "
           f"**Verdict: {_verdict(pi['ratio'] >= 100)}** (ratio {pi['ratio']:.0f})", ""]

    # e. Context extension.
    md += ["## Context extension", ""]
    ext_md = os.path.join(workdir, "extension.md")
    if os.path.exists(ext_md):
        text = open(ext_md).read().split("\n", 1)[1].strip()
        md += ["From `extension.md` (written by `pe_jax.extension`):", "", text, ""]
    else:
        md += [f"{NOT_MEASURED}: no `extension.md` in this workdir. Produce it with "
               f"`python train.py --workdir={workdir} --config=configs/extension.py` "
               "(about 16 minutes on 2 CPU cores; add `--config.extension_quick=True` for a "
               "smoke run), then rerun this report.", ""]

    # f. Cost.
    rates, source = cost_rates(runs, seeds, schemes)
    md += ["## Cost", ""]
    if source == "bench":
        md += ["Training speed from `bench/results.json` (`python bench/run.py`: the "
               "reference config d_model 256, 4 layers, L = 256, batch 16, float32, every "
               "step timed alone, interleaved with x-transformers in one run; the machine "
               "and date are in `bench/results_run.json`). tokens/s relative to NoPE is "
               "1 / (1 + overhead_vs_none).", "",
               "| scheme | pe_jax tokens/s | x-transformers tokens/s | ours / peer | "
               "relative to none | MFU |", "|---|---|---|---|---|---|"]
        for row in bench_results("results.json"):
            if row["scheme"] in schemes:
                peer = f"{row['peer_tok_s']:.0f}" if row.get("peer_tok_s") else "n/a"
                ratio = f"{row['ratio']:.2f}" if row.get("ratio") else "n/a"
                md.append(f"| {row['scheme']} | {row['ours_tok_s']:.0f} | {peer} | {ratio} | "
                          f"{rates[row['scheme']]:.2f} | {row['mfu']:.0%} |")
    else:
        md += ["Training throughput: median tokens/s of each run's logged windows "
               "(compilation excluded), median over seeds, relative to NoPE (no "
               "`bench/results.json` was found; `python bench/run.py` measures it "
               "properly). The machine may be shared: differences of a few percent are "
               "noise.", "",
               "| scheme | relative to none |", "|---|---|"]
        md += [f"| {sc} | {rates[sc]:.2f} |" for sc in rates]
    if rates:
        plot_cost(rates, os.path.join(workdir, "cost.png"), "none")
        md += ["", "![throughput](cost.png)", ""]
    md += cost_memory_lines(schemes)
    if {"alibi", "sinusoidal", "t5"} <= set(rates):
        close = abs(rates["alibi"] / rates["sinusoidal"] - 1) <= 0.05
        core = [sc for sc in rates if sc in FULL_SCHEMES]
        slowest = min(core, key=rates.get)
        md += [f"- **Claim 6** — ALiBi costs about nothing against sinusoidal; T5 is the "
               "slowest. Rule: ALiBi within 5% of sinusoidal and T5 the lowest tokens/s of "
               f"{', '.join(core)}. **Verdict: {_verdict(close and slowest == 't5')}** "
               f"(ALiBi/sinusoidal {rates['alibi'] / rates['sinusoidal']:.3f}; slowest: "
               f"{slowest}; source: {source})", ""]
    else:
        md += [f"- **Claim 6** — **Verdict: {NOT_MEASURED}** (needs alibi, sinusoidal, t5)", ""]

    # g. Summary table.
    md += ["## Summary table, measured", "",
           "The seed conversation's table (relative ability, extrapolation, low precision, "
           "efficiency per scheme), every cell replaced by a number measured above. "
           "Relative ability: max abs logit change under the shared shift. Extrapolation: "
           "loss(16L)/loss(L), non-overlapping / sliding. Low precision: what building the "
           "scheme's positional quantity in bfloat16 costs (pe_jax builds all of them in "
           "float32). Efficiency: training tokens/s relative to "
           f"{'NoPE' if 'none' in rates else (next(iter(rates)) if rates else 'NoPE')}.", "",
           "| scheme | relative ability | extrapolation 16x | low precision (bf16-built) | "
           "efficiency |", "|---|---|---|---|---|"]
    for scheme in schemes:
        s, invariant = shift_rows[scheme]
        rel_cell = f"{s['max_abs_change']:.1e} ({'invariant' if invariant else 'not invariant'})"
        non = ratios(runs, scheme, "nonoverlapping", L)[16]
        sli = ratios(runs, scheme, "sliding", L)[16]
        ext_cell = f"{_cell(non, 2)} / {_cell(sli, 2)}"
        eff = f"{rates[scheme]:.2f}" if scheme in rates else "n/a"
        low = lowprec.get(scheme, "not measured")
        md.append(f"| {scheme} | {rel_cell} | {ext_cell} | {low} | {eff} |")
    md += ["", f"Report written in {metrics.format_seconds(time.perf_counter() - started)}.",
           ""]
    text = "\n".join(md)
    with open(os.path.join(workdir, "REPORT.md"), "w") as f:
        f.write(text)
    logging.info("report written to %s", os.path.join(workdir, "REPORT.md"))
    return text

