"""What the two training-step benchmarks share: the reference shapes and the worker loop.

Standard library only, so that the peer's virtual environment (torch, no JAX) and
pe_jax's can both import it.

A benchmark script runs in one of two ways:

- directly: it builds the models for ``--schemes``, times ``--steps`` steps of each and
  prints a table;
- ``--serve``: a worker for ``bench/run.py``. It reads one JSON request a line on
  stdin and answers one JSON line on stdout, so that the runner can alternate between
  the peer's process and ours step by step while both keep their compiled models.

Requests: ``{"op": "prepare", "scheme": s}`` (build, compile, warm up),
``{"op": "time", "scheme": s, "steps": n}`` (``{"times": [...], "cpu": [...]}``: each
step timed on its own, wall and CPU seconds), ``{"op": "peak"}`` (``{"flops_per_s": x}``,
the library's float32 matmul speed) and ``{"op": "quit"}``. A failed request answers
``{"error": text}``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from typing import Callable

# The reference configuration of issue 7: a byte-level decoder trained with AdamW in
# float32. Both benchmarks read their shapes from here.
REFERENCE = {
    "vocab_size": 256,
    "d_model": 256,
    "num_layers": 4,
    "num_heads": 4,
    "mlp_ratio": 4,
    "seq_len": 256,
    "batch_size": 16,
    # AdamW as pe_jax's make_optimizer sets it up: warm-up and cosine decay of the
    # learning rate, global-norm clipping, decoupled weight decay.
    "learning_rate": 3e-3,
    "warmup_steps": 50,
    "num_steps": 100_000,  # the schedule's length; the benchmark runs only a few steps
    "beta1": 0.9,
    "beta2": 0.95,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
}

TOKENS_PER_STEP = REFERENCE["batch_size"] * REFERENCE["seq_len"]

# Matmul used to measure a library's float32 peak: square, large enough that the
# library's kernels run at full speed on a few CPU cores.
PEAK_SIZE = 2048


def time_steps(
    run_step: Callable[[], None], steps: int, cpu: list[float] | None = None
) -> list[float]:
    """Seconds of each of ``steps`` calls; ``run_step`` must return only when done.

    ``cpu``, if given, receives each call's CPU seconds (all threads of the process):
    on a shared machine it moves less with the other load than the wall time does.
    """
    times = []
    for _ in range(steps):
        cpu_start, start = time.process_time(), time.perf_counter()
        run_step()
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - cpu_start)
    return times


def time_peak(matmul: Callable[[], None], repeats: int = 10) -> float:
    """FLOP/s of ``matmul`` (a finished ``PEAK_SIZE`` cube), the median of ``repeats``."""
    matmul()
    seconds = statistics.median(time_steps(matmul, repeats))
    return 2.0 * PEAK_SIZE**3 / seconds


def serve(prepare: Callable[[str], None],
          run: Callable[[str, int, list[float]], list[float]],
          peak: Callable[[], float]) -> None:
    """Answer the runner's requests on stdin/stdout until ``quit`` or end of input."""
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not mix with the answers
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "quit":
                break
            if op == "prepare":
                prepare(request["scheme"])
                answer = {"ok": True}
            elif op == "time":
                cpu: list[float] = []
                times = run(request["scheme"], int(request["steps"]), cpu)
                answer = {"times": times, "cpu": cpu}
            elif op == "peak":
                answer = {"flops_per_s": peak()}
            else:
                raise ValueError(f"unknown request {request!r}")
        except Exception as error:  # reported to the runner, which decides
            traceback.print_exc()
            answer = {"error": f"{type(error).__name__}: {error}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


def print_row(scheme: str, times: list[float]) -> None:
    """One line of a direct run: median step time and tokens/s."""
    median = statistics.median(times)
    print(f"  {scheme:18s} {median * 1e3:8.1f} ms  {TOKENS_PER_STEP / median:8.0f} tokens/s"
          f"  (median of {len(times)} steps)", flush=True)
