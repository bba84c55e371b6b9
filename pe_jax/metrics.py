"""Metric writers and the progress line.

``Writer`` appends JSON lines to ``<workdir>/metrics.jsonl`` and, when tensorboardX is
installed, writes TensorBoard events under ``<workdir>/tb``. ``Progress`` logs a line
with the rate and an ETA through absl logging.
"""

from __future__ import annotations

import json
import logging as logging_std
import os
import time

from absl import logging


class _DropLibraryInfo(logging_std.Filter):
    """Drops INFO records logged from inside orbax (several per checkpoint)."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        return record.levelno > logging_std.INFO or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
    """Keep absl INFO for pe_jax's own lines; silence orbax's per-save chatter."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
        handler.addFilter(_DropLibraryInfo())


class Writer:
    def __init__(self, workdir: str):
        self._path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        try:
            import tensorboardX

            self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"))
        except ImportError:
            logging.info("tensorboardX not installed: metrics go to metrics.jsonl only")

    def write(self, step: int, values: dict) -> None:
        with open(self._path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``[label] step 200/600 (33%) loss 1.52 | 41.0k tok/s | elapsed 0:00:20 ETA 0:00:40``."""

    def __init__(self, start: int, total: int, label: str = ""):
        self._start, self._total, self._label = start, total, label
        self._t0 = time.perf_counter()

    def update(self, step: int, values: dict) -> None:
        elapsed = time.perf_counter() - self._t0
        done = step - self._start
        eta = elapsed / done * (self._total - step) if done else 0.0
        parts = [f"[{self._label}] step {step}/{self._total} ({100 * step // self._total}%)"]
        if "loss" in values:
            parts.append(f"loss {values['loss']:.4f}")
        if "tokens_per_s" in values:
            parts.append(f"| {values['tokens_per_s'] / 1e3:.1f}k tok/s")
        if "mfu" in values:
            parts.append(f"MFU {100 * values['mfu']:.0f}%")
        parts.append(f"| elapsed {format_seconds(elapsed)} ETA {format_seconds(eta)}")
        logging.info(" ".join(parts))
