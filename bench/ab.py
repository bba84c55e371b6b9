"""Time variants of pe_jax's training step against each other, interleaved.

  python bench/ab.py --schemes=none,rope \\
      --variant="rows=--shared_positions=0" --variant="shared=--shared_positions=1" \\
      [--rounds=6 --steps=2]
  python bench/ab.py --variant="this=" --variant="patched=--root=/tmp/pe_jax_copy"

Each variant is a ``bench/train_step.py --serve`` worker started with the arguments after
its ``name=`` (levers, or ``--root`` for another checkout); leading ``NAME=VALUE`` words
set environment variables of that worker (``"x=XLA_FLAGS=--xla_... --shared_positions=0"``).
Each round runs ``--steps`` steps of every variant for every scheme in turn; the medians
over all rounds, of wall time and of CPU time, are printed next to the first variant's.
On a shared machine the CPU time of a step moves less with the other load than its wall
time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from run import Worker  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME=ARGS for bench/train_step.py (repeat)")
    parser.add_argument("--schemes", default="none")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    names = args.schemes.split(",")

    workers = {}
    try:
        for spec in args.variant:
            label, _, extra = spec.partition("=")
            words = shlex.split(extra)
            env = {}
            while words and "=" in words[0] and not words[0].startswith("-"):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            workers[label] = Worker(label, [sys.executable, os.path.join(BENCH, "train_step.py"),
                                            "--serve", *words], env)
            for name in names:
                workers[label].ask(op="prepare", scheme=name)
        wall = {(v, n): [] for v in workers for n in names}
        cpu = {(v, n): [] for v in workers for n in names}
        for _ in range(args.rounds):
            for name in names:
                for label, worker in workers.items():
                    answer = worker.ask(op="time", scheme=name, steps=args.steps)
                    wall[label, name] += answer["times"]
                    cpu[label, name] += answer["cpu"]
    finally:
        for worker in workers.values():
            worker.close()

    first = next(iter(workers))
    print(f"{'variant':14s} {'scheme':18s} {'wall ms':>9s} {'vs first':>9s} "
          f"{'cpu ms':>9s} {'vs first':>9s}")
    for name in names:
        base_wall = statistics.median(wall[first, name])
        base_cpu = statistics.median(cpu[first, name])
        for label in workers:
            w, c = statistics.median(wall[label, name]), statistics.median(cpu[label, name])
            print(f"{label:14s} {name:18s} {1e3 * w:9.1f} {w / base_wall - 1:+9.1%} "
                  f"{1e3 * c:9.1f} {c / base_cpu - 1:+9.1%}")


if __name__ == "__main__":
    main()
