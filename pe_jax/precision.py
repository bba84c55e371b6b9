"""Precision audit: what low-precision dtypes do to positions, angles, tables and logits.

Axis legend: P positions, K frequency pairs (``Dh/2`` or ``D/2``), Dh head width.

Every function here is pure numpy (``ml_dtypes`` supplies bfloat16) and needs no model.
Low-precision arithmetic is emulated by rounding to the dtype after every operation,
which is what an unfused kernel does; the reference is float64.

Three ways of building a rotary or sinusoidal table are compared:

- ``exact``: float64 angles and tables (the reference);
- ``naive_bf16``: positions and frequencies cast to bfloat16, the angle ``p * w`` and
  its sine and cosine each rounded to bfloat16: what a model gets when it builds its
  tables in its compute dtype;
- ``pe_jax``: angles, sines and cosines in float32 from integer positions; only the
  finished result (the rotated q or k, the embedding plus its code) is rounded to the
  bfloat16 compute dtype: what ``pe_jax`` does (``schemes/rope.py``,
  ``schemes/sinusoidal.py``).

REFERENCE.md claims 22-23: bfloat16 keeps integers exact up to 256 (769 distinct values
among 0..4095), float16 up to 2048 (3073 distinct among 0..4095); angles built in
bfloat16 are off by whole radians past a few thousand positions.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_dtypes
import numpy as np

DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}

# Position bands of the audit, [start, stop).
BANDS: tuple[tuple[int, int], ...] = (
    (0, 256), (256, 1024), (1024, 4096), (4096, 16384), (16384, 65536),
)
COUNT_LENGTHS = (256, 257, 1024, 2048, 2049, 4096, 16384, 65536)


def band_label(band: tuple[int, int]) -> str:
    def short(n: int) -> str:
        return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)

    return f"[{short(band[0])},{short(band[1])})"


def round_to(x: Any, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` (nearest, ties to even) and returned as float64."""
    return np.asarray(x, np.float64).astype(np.float32).astype(DTYPES[dtype]).astype(np.float64)


def distinct_positions(n: int, dtype: str) -> int:
    """How many distinct values the integer positions ``0..n-1`` keep in ``dtype``."""
    with np.errstate(over="ignore"):  # float16 rounds 65520 and above to inf
        return int(np.unique(np.arange(n, dtype=np.int64).astype(DTYPES[dtype])).size)


def exact_up_to(dtype: str, limit: int = 1 << 20) -> int:
    """The largest ``N`` such that every integer ``0..N`` is exact in ``dtype``."""
    ints = np.arange(limit + 1, dtype=np.int64)
    with np.errstate(over="ignore"):
        wrong = np.nonzero(ints.astype(DTYPES[dtype]).astype(np.float64) != ints)[0]
    return int(wrong[0] - 1) if wrong.size else limit


def inverse_frequencies(width: int, base: float = 10000.0) -> np.ndarray:
    """``w_k = base^(-2k/width)``, ``k = 0 .. width/2 - 1``, float64."""
    return base ** (-np.arange(0, width, 2, dtype=np.float64) / width)


def angles(pos_P: np.ndarray, inv_freq_K: np.ndarray, method: str) -> np.ndarray:
    """``p * w`` as float64 ``PxK``, built by ``method`` (see the module docstring)."""
    pos_P = np.asarray(pos_P, np.int64)
    if method == "exact":
        return pos_P[:, None].astype(np.float64) * inv_freq_K[None, :]
    if method == "naive_bf16":
        return round_to(round_to(pos_P, "bfloat16")[:, None] * round_to(inv_freq_K, "bfloat16"),
                        "bfloat16")
    if method == "pe_jax":  # float32 position times float32 frequency, rounded to float32
        return round_to(round_to(pos_P, "float32")[:, None] * round_to(inv_freq_K, "float32"),
                        "float32")
    raise ValueError(f"method must be 'exact', 'naive_bf16' or 'pe_jax', got {method!r}")


def cos_sin(pos_P: np.ndarray, inv_freq_K: np.ndarray, method: str) -> tuple[np.ndarray, ...]:
    """The ``PxK`` cosine and sine tables as ``method`` delivers them to the model."""
    angle = angles(pos_P, inv_freq_K, method)
    cos, sin = np.cos(angle), np.sin(angle)
    if method == "exact":
        return cos, sin
    if method == "pe_jax":  # float32 tables; the caller rounds only its final result
        return round_to(cos, "float32"), round_to(sin, "float32")
    return round_to(cos, "bfloat16"), round_to(sin, "bfloat16")


def _band_positions(band: tuple[int, int], samples: int, rng: np.random.Generator) -> np.ndarray:
    start, stop = band
    if stop - start <= samples:
        return np.arange(start, stop)
    inner = rng.integers(start, stop, samples - 2)
    return np.concatenate([[start, stop - 1], inner])


def table_errors(width: int, base: float = 10000.0, samples: int = 2048, seed: int = 0) -> dict:
    """Per band, the max abs error against float64 of the angles and the cos/sin tables."""
    rng = np.random.default_rng(seed)
    inv_freq_K = inverse_frequencies(width, base)
    out = {"angle_naive_bf16": [], "angle_pe_jax": [], "table_naive_bf16": [],
           "table_pe_jax": []}
    for band in BANDS:
        pos_P = _band_positions(band, samples, rng)
        exact_angle = angles(pos_P, inv_freq_K, "exact")
        exact = cos_sin(pos_P, inv_freq_K, "exact")
        for method in ("naive_bf16", "pe_jax"):
            angle_err = np.max(np.abs(angles(pos_P, inv_freq_K, method) - exact_angle))
            got = cos_sin(pos_P, inv_freq_K, method)
            table_err = max(np.max(np.abs(g - e)) for g, e in zip(got, exact))
            out[f"angle_{method}"].append(float(angle_err))
            out[f"table_{method}"].append(float(table_err))
    return out


def _rotate_half(x_PxD: np.ndarray, cos_PxK: np.ndarray, sin_PxK: np.ndarray) -> np.ndarray:
    """Half-split RoPE rotation of ``x`` (float64 arithmetic)."""
    half = x_PxD.shape[-1] // 2
    a, b = x_PxD[:, :half], x_PxD[:, half:]
    return np.concatenate([a * cos_PxK - b * sin_PxK, b * cos_PxK + a * sin_PxK], axis=-1)


def rotated(x_D: np.ndarray, pos_P: np.ndarray, inv_freq_K: np.ndarray, method: str):
    """``x`` rotated to every position of ``pos_P`` as ``method`` would hand it to q.k.

    Except for ``exact``, ``x`` is first rounded to bfloat16 (it comes out of a bf16
    projection) and the rotated vector is rounded to bfloat16 once (pe_jax rotates in
    float32 and casts; for the naive path a single rounding slightly understates the
    error of a chain of bf16 operations, whose main error is the table anyway).
    """
    cos, sin = cos_sin(pos_P, inv_freq_K, method)
    if method == "exact":
        return _rotate_half(np.broadcast_to(x_D, (len(pos_P), x_D.size)), cos, sin)
    x_PxD = np.broadcast_to(round_to(x_D, "bfloat16"), (len(pos_P), x_D.size))
    return round_to(_rotate_half(x_PxD, cos, sin), "bfloat16")


def logit_changes(
    head_dim: int = 64, base: float = 10000.0, samples: int = 512,
    offsets: tuple[int, ...] = (0, 1, 16, 128), seed: int = 0,
) -> dict:
    """Per band, the max change of ``<R(m) q, R(n) k>`` against float64 (unit q and k).

    ``m`` is sampled in the band and ``n = m - offset``. ``|score| <= 1``, so a change
    near 1 means the logit carries no positional information any more.
    """
    rng = np.random.default_rng(seed)
    q_D, k_D = rng.standard_normal((2, head_dim))
    q_D, k_D = q_D / np.linalg.norm(q_D), k_D / np.linalg.norm(k_D)
    inv_freq_K = inverse_frequencies(head_dim, base)
    out = {"naive_bf16": [], "pe_jax": []}
    for band in BANDS:
        m_P = _band_positions(band, samples, rng)
        n_P = np.concatenate([np.maximum(m_P - d, 0) for d in offsets])
        m_P = np.tile(m_P, len(offsets))
        exact = np.sum(rotated(q_D, m_P, inv_freq_K, "exact")
                       * rotated(k_D, n_P, inv_freq_K, "exact"), axis=-1)
        for method in out:
            score = np.sum(rotated(q_D, m_P, inv_freq_K, method)
                           * rotated(k_D, n_P, inv_freq_K, method), axis=-1)
            out[method].append(float(np.max(np.abs(score - exact))))
    return out


def distinct_table_rows(n: int = 4096, head_dim: int = 64, base: float = 10000.0) -> dict:
    """Distinct rows of the cos/sin table for positions ``0..n-1`` (claim 23)."""
    inv_freq_K = inverse_frequencies(head_dim, base)
    pos_P = np.arange(n)
    result = {}
    for method, name in (("pe_jax", "float32_angles"), ("naive_bf16", "bfloat16_angles")):
        angle = angles(pos_P, inv_freq_K, method)
        table = np.concatenate([np.cos(angle), np.sin(angle)], axis=-1).astype(np.float32)
        result[name] = int(np.unique(table, axis=0).shape[0])
    return result


def audit(head_dim: int = 64, d_model: int = 128, base: float = 10000.0) -> dict:
    """Every figure of the audit as a JSON-ready dict."""
    counts = {
        dtype: {
            "exact_up_to": exact_up_to(dtype),
            "distinct_among_0_to_n_minus_1": {
                str(n): distinct_positions(n, dtype) for n in COUNT_LENGTHS
            },
        }
        for dtype in ("bfloat16", "float16")
    }
    return {
        "bands": [band_label(b) for b in BANDS],
        "positions": counts,
        "rope": {"head_dim": head_dim, "base": base, **table_errors(head_dim, base)},
        "sinusoidal": {"d_model": d_model, "base": base, **table_errors(d_model, base)},
        "logits": {"head_dim": head_dim, "base": base, **logit_changes(head_dim, base)},
        "table_rows_distinct_0_to_4095": distinct_table_rows(4096, head_dim, base),
    }


def format_audit(result: dict) -> str:
    """The audit as a few plain-text tables."""
    lines = ["Integer positions cast to a float dtype:"]
    for dtype, info in result["positions"].items():
        counts = ", ".join(f"{n}: {c}" for n, c in info["distinct_among_0_to_n_minus_1"].items())
        lines.append(f"  {dtype:>8}: exact up to {info['exact_up_to']}; distinct among "
                     f"0..N-1 for N = {counts}")
    header = f"  {'':34}" + "".join(f"{b:>14}" for b in result["bands"])
    rows = [
        ("RoPE angle, bf16-built (rad)", result["rope"]["angle_naive_bf16"]),
        ("RoPE angle, pe_jax f32 (rad)", result["rope"]["angle_pe_jax"]),
        ("RoPE cos/sin, bf16-built", result["rope"]["table_naive_bf16"]),
        ("RoPE cos/sin, pe_jax f32", result["rope"]["table_pe_jax"]),
        ("sinusoidal, bf16-built", result["sinusoidal"]["table_naive_bf16"]),
        ("sinusoidal, pe_jax f32", result["sinusoidal"]["table_pe_jax"]),
        ("q.k change, bf16-built tables", result["logits"]["naive_bf16"]),
        ("q.k change, pe_jax (bf16 q, k)", result["logits"]["pe_jax"]),
    ]
    lines += ["", "Max abs error against float64, by position band "
              f"(RoPE head_dim {result['rope']['head_dim']}, sinusoidal d_model "
              f"{result['sinusoidal']['d_model']}, unit q and k):", header]
    lines += [f"  {name:34}" + "".join(f"{v:>14.3g}" for v in values) for name, values in rows]
    rows_info = result["table_rows_distinct_0_to_4095"]
    lines += ["", f"Distinct cos/sin table rows among positions 0..4095: float32 angles "
              f"{rows_info['float32_angles']}, bfloat16 angles {rows_info['bfloat16_angles']}"]
    return "\n".join(lines)


def plot_audit(result: dict, path: str) -> None:
    """Errors by band on a log scale, one line per quantity and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.4))
    xs = np.arange(len(result["bands"]))
    series = [
        ("RoPE angle (rad), bf16-built", result["rope"]["angle_naive_bf16"], "C0", "-"),
        ("RoPE cos/sin, bf16-built", result["rope"]["table_naive_bf16"], "C1", "-"),
        ("sinusoidal, bf16-built", result["sinusoidal"]["table_naive_bf16"], "C2", "-"),
        ("q.k change, bf16-built", result["logits"]["naive_bf16"], "C3", "-"),
        ("RoPE cos/sin, pe_jax", result["rope"]["table_pe_jax"], "C1", "--"),
        ("sinusoidal, pe_jax", result["sinusoidal"]["table_pe_jax"], "C2", "--"),
        ("q.k change, pe_jax", result["logits"]["pe_jax"], "C3", "--"),
    ]
    for label, values, color, style in series:
        ax.plot(xs, np.maximum(values, 1e-12), marker="o", color=color, linestyle=style,
                label=label)
    ax.set_xticks(xs, result["bands"])
    ax.set_yscale("log")
    ax.set_xlabel("position band")
    ax.set_ylabel("max abs error vs float64")
    ax.set_title("bfloat16 compute: tables built in bf16 (solid) vs pe_jax's float32 angles "
                 "(dashed)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_audit(workdir: str) -> dict:
    """Run the audit; write ``workdir/audit.json`` and ``workdir/audit.png``."""
    os.makedirs(workdir, exist_ok=True)
    result = audit()
    with open(os.path.join(workdir, "audit.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_audit(result, os.path.join(workdir, "audit.png"))
    return result
