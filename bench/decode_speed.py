"""Cached decoding speed per scheme at a given position: tokens/s of one-token steps.

  python bench/decode_speed.py [--schemes=rope,alibi] [--positions=1024,16384] [--steps=32]

For each scheme and position ``P`` the main job's default model (configs/default.py;
random parameters: speed does not depend on their values, or ``--workdir=<compare
workdir>`` for trained ones) gets a KV cache of ``P + steps + warmup`` slots, is
prefilled with ``P`` bytes of held-out stdlib text in chunks of ``--chunk`` tokens, and
then decodes one token at a time at positions ``P, P + 1, ...`` with batch 1, through
``decode.CachedDecoder`` (the path ``sample.py`` uses, host-side checks included). Each
step is timed on its own until its logits are ready; the median gives tokens/s.

The cache is preallocated and attention reads all of it, masked, so a step's cost grows
with the cache size, not with how much of it is filled: the cache is sized to the
position being measured. The learned table gets ``learned_max_len`` = the cache size
(the default, the training length 128, refuses every position past it). Prints a table
and writes bench/decode_speed.json.
"""

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from pe_jax import data, decode, evaluate, model, schemes, train  # noqa: E402

WARMUP = 2


def build(scheme: str, cache_len: int, workdir: str):
    """The model config and parameters to decode with."""
    if workdir:
        config = evaluate.load_config(workdir)
        params = train.restore_latest(workdir, config)[0].params
        return train.model_config(config), params
    config = default.get_config()
    config.pe = scheme
    if scheme == "learned":
        config.learned_max_len = cache_len
    mcfg = train.model_config(config)
    decoder = model.Decoder(mcfg)
    params = decoder.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                          jnp.arange(8, dtype=jnp.int32)[None])["params"]
    return mcfg, params


def measure(scheme: str, position: int, steps: int, chunk: int, text: np.ndarray,
            workdir: str) -> dict:
    cache_len = position + WARMUP + steps
    mcfg, params = build(scheme, cache_len, workdir)
    runner = decode.CachedDecoder(mcfg, params, batch=1, max_len=cache_len)
    tokens = text[: cache_len].astype(np.int32)
    start = time.perf_counter()
    for begin in range(0, position, chunk):
        end = min(begin + chunk, position)
        jax.block_until_ready(runner.step(tokens[None, begin:end], np.arange(begin, end)[None]))
    prefill_s = time.perf_counter() - start
    seconds = []
    for i in range(position, cache_len):
        start = time.perf_counter()
        jax.block_until_ready(runner.step(tokens[None, i:i + 1], np.array([[i]])))
        seconds.append(time.perf_counter() - start)
    step_s = statistics.median(seconds[WARMUP:])
    return {"scheme": scheme, "position": position, "cache_len": cache_len,
            "tokens_per_s": 1.0 / step_s, "step_ms": 1e3 * step_s, "prefill_s": prefill_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default="")
    parser.add_argument("--positions", default="1024,16384")
    parser.add_argument("--steps", type=int, default=32)
    # 32 keeps FIRE's bias over a 16K cache on its matmul path (see schemes/fire.py).
    parser.add_argument("--chunk", type=int, default=32, help="prefill chunk (tokens)")
    parser.add_argument("--workdir", default="", help="a compare workdir with trained runs")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "decode_speed.json"))
    args = parser.parse_args()
    names = [s for s in args.schemes.split(",") if s] or schemes.names()
    for name in names:
        schemes.get(name)  # an unknown name fails before any work
    try:
        positions = [int(p) for p in args.positions.split(",")]
    except ValueError:
        raise SystemExit(f"--positions must be comma-separated integers, got {args.positions!r}")
    if min(positions) < 1 or args.steps < 1 or args.chunk < 1:
        raise SystemExit(f"positions, --steps and --chunk must be >= 1: {positions}, "
                         f"{args.steps}, {args.chunk}")
    text = data.load("stdlib").val
    if len(text) < max(positions) + WARMUP + args.steps:
        raise SystemExit(f"held-out text ({len(text)} bytes) is shorter than the cache")
    rows = []
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; batch 1, one token a step")
    for name in names:
        workdir = os.path.join(args.workdir, name) if args.workdir else ""
        for position in positions:
            row = measure(name, position, args.steps, args.chunk, text, workdir)
            rows.append(row)
            print(f"{name:>18} @ {position:>6}: {row['tokens_per_s']:7.1f} tok/s "
                  f"({row['step_ms']:.2f} ms/step, prefill {row['prefill_s']:.1f} s)",
                  flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print("\n| scheme | " + " | ".join(f"tok/s at {p}" for p in positions) + " |")
    print("|---|" + "---:|" * len(positions))
    for name in names:
        cells = {r["position"]: r["tokens_per_s"] for r in rows if r["scheme"] == name}
        print(f"| {name} | " + " | ".join(f"{cells[p]:.0f}" for p in positions) + " |")


if __name__ == "__main__":
    main()
