"""pe_jax against x-transformers, interleaved on one machine: tokens/s, overheads, MFU.

  python bench/run.py                        # every scheme, 6 rounds of 2 steps each
  python bench/run.py --schemes=none,rope,alibi --rounds=3 --steps=1   # a quick look

Creates the peer's virtual environment on first use (``bench/.peer_venv``: torch 2.13.0
CPU first, so that no GPU build is pulled in, then x-transformers), then starts two
workers, ``bench/peer_xtransformers.py --serve`` in that environment and
``bench/train_step.py --serve`` in this one, and builds every model once. Each round
times, for every scheme in turn, ``--steps`` peer steps and then ``--steps`` of ours,
and measures both libraries' float32 matmul speed; one worker is idle while the other
runs. Medians over all rounds give:

- tokens/s of each library and their ratio (ours / peer);
- each scheme's step-time overhead over NoPE (``median(scheme) / median(none) - 1``);
- MFU: ``tokens/s * model FLOPs per token / JAX's float32 matmul FLOP/s``, the matmul
  measured in the same run (``pe_jax.flops``).

Writes ``bench/results.json`` (one object per scheme: ``scheme``, ``ours_tok_s``,
``peer_tok_s`` (null where the peer lacks the scheme), ``ratio``, ``overhead_vs_none``,
``mfu``), ``bench/results_run.json`` (the machine, the matmul speeds, every timed step),
and the table in README.md between its ``bench:start``/``bench:end`` marks.
Arguments after ``--`` go to ``bench/train_step.py`` (its levers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCH)

import timing  # noqa: E402
from pe_jax import flops, schemes  # noqa: E402

PEER_VENV = os.path.join(BENCH, ".peer_venv")
PEER_PYTHON = os.path.join(PEER_VENV, "bin", "python")
TORCH_VERSION = "2.13.0"
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def ensure_peer_venv() -> None:
    """Create ``bench/.peer_venv`` with torch 2.13.0 (CPU) and x-transformers if missing."""
    if not os.path.exists(PEER_PYTHON):
        subprocess.run([sys.executable, "-m", "venv", PEER_VENV], check=True)
        pip = [PEER_PYTHON, "-m", "pip", "install", "-q"]
        subprocess.run(pip + [f"torch=={TORCH_VERSION}"], check=True)  # first: no GPU build
        subprocess.run(pip + ["x-transformers"], check=True)
    version = subprocess.run(
        [PEER_PYTHON, "-c", "import torch, x_transformers; print(torch.__version__)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    if version.split("+")[0] != TORCH_VERSION:
        raise RuntimeError(
            f"{PEER_VENV} has torch {version}, not {TORCH_VERSION}; remove the folder and "
            f"rerun to rebuild it"
        )


class Worker:
    """A benchmark script in ``--serve`` mode: one JSON request and answer per line."""

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None = None):
        self.name = name
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env=None if env is None else {**os.environ, **env},
        )

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker exited (see its output above)")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name} worker, request {request}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform()}


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def summarise(ours: dict, peer: dict, jax_peak: float) -> list[dict]:
    flops_per_token = reference_flops_per_token()
    tokens = timing.TOKENS_PER_STEP
    none_median = statistics.median(ours["none"])
    rows = []
    for scheme, times in ours.items():
        ours_tok_s = tokens / statistics.median(times)
        peer_tok_s = tokens / statistics.median(peer[scheme]) if scheme in peer else None
        rows.append({
            "scheme": scheme,
            "ours_tok_s": round(ours_tok_s, 1),
            "peer_tok_s": None if peer_tok_s is None else round(peer_tok_s, 1),
            "ratio": None if peer_tok_s is None else round(ours_tok_s / peer_tok_s, 3),
            "overhead_vs_none": round(statistics.median(times) / none_median - 1.0, 4),
            "mfu": round(ours_tok_s * flops_per_token / jax_peak, 4),
        })
    return rows


def reference_flops_per_token() -> float:
    r = timing.REFERENCE
    return flops.train_flops_per_token(
        r["d_model"], r["num_layers"], r["seq_len"], r["vocab_size"], r["mlp_ratio"]
    )


def table(rows: list[dict], run: dict) -> str:
    """The results as a Markdown table with the machine and matmul speeds under it."""
    lines = [
        "| scheme | pe_jax tokens/s | x-transformers tokens/s | ratio | overhead vs NoPE | MFU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peer = "-" if r["peer_tok_s"] is None else f"{r['peer_tok_s']:,.0f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(
            f"| {r['scheme']} | {r['ours_tok_s']:,.0f} | {peer} | {ratio} | "
            f"{100 * r['overhead_vs_none']:+.1f}% | {100 * r['mfu']:.0f}% |"
        )
    m = run["machine"]
    lines += [
        "",
        f"{m['cpu']}, {m['cores']} cores ({m['system']}); {run['date']}. Float32 matmul "
        f"({timing.PEAK_SIZE}-cube, same run): JAX {run['jax_peak_flops'] / 1e9:.0f} GFLOP/s, "
        f"torch {run['torch_peak_flops'] / 1e9:.0f} GFLOP/s. Medians of "
        f"{run['rounds'] * run['steps']} steps per scheme and library, interleaved; "
        f"load average {run['load_before']} before, {run['load_after']} after.",
    ]
    return "\n".join(lines)


def update_readme(text: str) -> bool:
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        readme = f.read()
    if README_START not in readme or README_END not in readme:
        return False
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{README_START}\n{text}\n{README_END}{tail}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=",".join(schemes.names()),
                        help="pe_jax schemes (the peer runs those it has)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2, help="steps per turn")
    parser.add_argument("--out", default=os.path.join(BENCH, "results.json"))
    parser.add_argument("--readme", type=int, default=1, help="1: update README.md's table")
    args, lever_args = parser.parse_known_args()
    lever_args = [a for a in lever_args if a != "--"]
    names = args.schemes.split(",")
    for name in names:
        schemes.get(name)
    if "none" not in names:
        names.insert(0, "none")  # the baseline of every overhead

    ensure_peer_venv()
    peer_names = subprocess.run(
        [PEER_PYTHON, "-c", "import sys; sys.path.insert(0, 'bench'); "
         "import peer_xtransformers as p; print(','.join(p.SCHEMES))"],
        check=True, capture_output=True, text=True, cwd=ROOT,
    ).stdout.strip().split(",")
    shared = [n for n in names if n in peer_names]

    load_before = load_average()
    peer = Worker("peer", [PEER_PYTHON, os.path.join(BENCH, "peer_xtransformers.py"), "--serve"])
    ours = Worker("pe_jax", [sys.executable, os.path.join(BENCH, "train_step.py"), "--serve",
                             *lever_args])
    try:
        for name in names:
            print(f"building {name}", flush=True)
            if name in shared:
                peer.ask(op="prepare", scheme=name)
            ours.ask(op="prepare", scheme=name)

        ours_times, ours_cpu = {n: [] for n in names}, {n: [] for n in names}
        peer_times, peer_cpu = {n: [] for n in shared}, {n: [] for n in shared}
        jax_peaks, torch_peaks = [], []
        for round_ in range(args.rounds):
            for name in names:
                if name in shared:
                    answer = peer.ask(op="time", scheme=name, steps=args.steps)
                    peer_times[name] += answer["times"]
                    peer_cpu[name] += answer["cpu"]
                answer = ours.ask(op="time", scheme=name, steps=args.steps)
                ours_times[name] += answer["times"]
                ours_cpu[name] += answer["cpu"]
            torch_peaks.append(peer.ask(op="peak")["flops_per_s"])
            jax_peaks.append(ours.ask(op="peak")["flops_per_s"])
            ours_ms = 1e3 * statistics.median(ours_times["none"])
            peer_ms = 1e3 * statistics.median(peer_times["none"]) if "none" in peer_times else 0
            print(f"round {round_ + 1}/{args.rounds}: none {ours_ms:.0f} ms (peer {peer_ms:.0f} "
                  f"ms), JAX matmul {jax_peaks[-1] / 1e9:.0f} GFLOP/s", flush=True)
    finally:
        peer.close()
        ours.close()

    jax_peak = statistics.median(jax_peaks)
    rows = summarise(ours_times, peer_times, jax_peak)
    run = {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "rounds": args.rounds,
        "steps": args.steps,
        "levers": lever_args,
        "load_before": load_before,
        "load_after": load_average(),
        "jax_peak_flops": jax_peak,
        "torch_peak_flops": statistics.median(torch_peaks),
        "flops_per_token": reference_flops_per_token(),
        "jax_peaks": jax_peaks,
        "torch_peaks": torch_peaks,
        "ours_step_s": ours_times,
        "peer_step_s": peer_times,
        "ours_step_cpu_s": ours_cpu,  # CPU seconds of the worker process, all threads
        "peer_step_cpu_s": peer_cpu,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(os.path.dirname(args.out), "results_run.json"), "w") as f:
        json.dump(run, f, indent=1)
    text = table(rows, run)
    print(text)
    if args.readme and not update_readme(text):
        print(f"README.md has no {README_START} ... {README_END} block; not updated")


if __name__ == "__main__":
    main()
