"""pe_jax's training step at the reference config, every registered scheme.

  python bench/train_step.py [--schemes=none,rope] [--steps=10] [levers]
  python bench/train_step.py --serve [levers]   (a worker of bench/run.py)

The step is the one training runs: ``train.create_state`` and ``train.make_train_step``
(jit with explicit shardings on a one-device mesh, the state donated), at the shapes and
optimizer of ``timing.REFERENCE`` (AdamW, float32), each scheme with its default options.
A fixed batch of random bytes is placed on the device once; each step is timed on its
own, from dispatch to its results being ready.

Options (the levers measured in bench/README.md; those that help are defaults in the
model and in ``train.py``, so this step is the one training runs):

- ``--shared_positions`` (default 1): positions ``1xL``, shared by every row, as
  ``train.py`` passes them; 0 repeats them per row (``BxL``), to time the difference.
- ``--xla_options``: XLA compiler options as JSON, e.g.
  ``'{"xla_cpu_enable_concurrency_optimized_scheduler": false}'``.

``--root=PATH`` times the pe_jax of another checkout (a modified copy), with this
script; ``bench/ab.py`` alternates such variants.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))


def _checkout_root() -> str:
    """This checkout, or the one ``--root=PATH`` names (to time a modified copy)."""
    for i, arg in enumerate(sys.argv):
        if arg.startswith("--root="):
            return os.path.abspath(arg.split("=", 1)[1])
        if arg == "--root" and i + 1 < len(sys.argv):
            return os.path.abspath(sys.argv[i + 1])
    return os.path.dirname(BENCH)


ROOT = _checkout_root()  # read before pe_jax is imported: it decides which pe_jax
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCH)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import timing  # noqa: E402
from configs import default  # noqa: E402
from pe_jax import flops, schemes, sharding, train  # noqa: E402

REF = timing.REFERENCE


def reference_config(scheme: str):
    """configs/default.py at the reference shapes and optimizer, with ``scheme``."""
    config = default.get_config()
    config.pe = scheme
    for key in ("d_model", "num_layers", "num_heads", "mlp_ratio", "seq_len", "batch_size",
                "learning_rate", "warmup_steps", "num_steps", "weight_decay", "grad_clip"):
        config[key] = REF[key]
    config.compute_dtype = "float32"
    return config


def fixed_batch(shared_positions: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Random bytes; positions ``0..L-1`` for every row, or once (``1xL``) if shared."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, REF["vocab_size"], (REF["batch_size"], REF["seq_len"] + 1))
    rows = 1 if shared_positions else REF["batch_size"]
    positions = np.broadcast_to(np.arange(REF["seq_len"]), (rows, REF["seq_len"]))
    return {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "positions": np.ascontiguousarray(positions, dtype=np.int32),
    }


class Ours:
    """One compiled step, train state and device batch per scheme, built on first use."""

    def __init__(self, xla_options: dict | None = None, shared_positions: bool = True,
                 warmup: int = 3):
        self.xla_options = xla_options or {}
        self.shared_positions = shared_positions
        self.warmup = warmup
        self.steps: dict[str, list] = {}

    def prepare(self, scheme: str) -> None:
        if scheme in self.steps:
            return
        config = reference_config(scheme)
        mesh, rules = sharding.make_mesh(config), sharding.rules_from_config(config)
        state = train.create_state(config, train.model_config(config), mesh, rules)
        host_batch = fixed_batch(self.shared_positions)
        batch_shardings = sharding.batch_shardings(host_batch, mesh, rules)
        batch = sharding.put_batch(host_batch, batch_shardings)
        step = train.make_train_step(train.state_shardings(state), batch_shardings, mesh, rules)
        compiled = step.lower(state, batch).compile(compiler_options=self.xla_options)
        entry = [compiled, state, batch]
        for _ in range(self.warmup):
            self._step(entry)
        self.steps[scheme] = entry

    @staticmethod
    def _step(entry: list) -> None:
        compiled, state, batch = entry
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        entry[1] = state  # the old state was donated

    def run(self, scheme: str, steps: int, cpu: list[float] | None = None) -> list[float]:
        self.prepare(scheme)
        entry = self.steps[scheme]
        return timing.time_steps(lambda: self._step(entry), steps, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=",".join(schemes.names()))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--serve", action="store_true", help="worker mode for bench/run.py")
    parser.add_argument("--xla_options", default="{}", help="XLA compiler options, JSON")
    parser.add_argument("--shared_positions", type=int, default=1,
                        help="1: positions 1xL shared by every row (as train.py); 0: BxL")
    parser.add_argument("--root", default=ROOT,
                        help="the pe_jax checkout to time (default: this one)")
    args = parser.parse_args()
    ours = Ours(json.loads(args.xla_options), bool(args.shared_positions))
    peak = lambda: flops.matmul_flops_per_s(timing.PEAK_SIZE)  # noqa: E731
    if args.serve:
        timing.serve(ours.prepare, ours.run, peak)
        return
    names = args.schemes.split(",")
    for name in names:
        schemes.get(name)  # an unknown name fails before any compiling
    print(f"pe_jax (jax {jax.__version__}, {jax.devices()[0].platform}), "
          f"{timing.TOKENS_PER_STEP} tokens/step")
    for name in names:
        timing.print_row(name, ours.run(name, args.steps))
    print(f"  jax float32 matmul: {peak() / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
