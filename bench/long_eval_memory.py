"""Peak resident memory of long-context evaluation, per scheme and length.

  python bench/long_eval_memory.py [--schemes=rope,alibi] [--lengths=4096,8192,16384,32768]

For each scheme a fresh process builds the main job's default model (configs/default.py;
parameters from --workdir=<compare workdir>/<scheme> when given, random otherwise:
memory does not depend on the values), then scores one window of each length, shortest
first, with blockwise attention, and reads its own peak RSS after each length (the peak
is monotone, and lengths rise, so each figure is that length's peak). The learned table
is sized to the longest length (its default, the training length, refuses longer ones).
Prints a table and writes bench/long_eval_memory.json; ``--merge`` keeps the rows of
schemes not measured in this call.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def child(scheme: str, lengths: list[int], block: int, workdir: str | None) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs import default
    from pe_jax import data, model, train

    config = default.get_config()
    config.pe = scheme
    if scheme == "learned":  # its table must reach the longest length (default: 128)
        config.learned_max_len = max(lengths)
    if workdir:
        from pe_jax import evaluate

        config = evaluate.load_config(workdir)
        params = train.restore_latest(workdir, config)[0].params
    mcfg = train.model_config(config)
    decoder = model.Decoder(mcfg)
    if not workdir:
        params = decoder.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                              jnp.arange(8, dtype=jnp.int32)[None])["params"]
    val = data.load("stdlib").val

    @jax.jit
    def loss(params, tokens, positions, targets):
        logits = decoder.apply({"params": params}, tokens, positions, block_size=block)
        return jnp.mean(train.cross_entropy(logits, targets))

    for length in lengths:
        window = data.eval_windows(val, length, length)
        start = time.perf_counter()
        value = float(loss(params, window["inputs"], window["positions"], window["targets"]))
        seconds = time.perf_counter() - start
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"scheme": scheme, "length": length, "peak_rss_mib": rss_mib,
                          "seconds": seconds, "loss": value}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schemes", default="")
    parser.add_argument("--lengths", default="4096,8192,16384,32768")
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--workdir", default="", help="a compare workdir with trained runs")
    parser.add_argument("--child", default="")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other schemes' rows of an existing json")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "long_eval_memory.json"))
    args = parser.parse_args()
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
    except ValueError:
        raise SystemExit(f"--lengths must be comma-separated integers, got {args.lengths!r}")
    if min(lengths) < 1 or args.block < 1:
        raise SystemExit(f"--lengths and --block must be >= 1, got {lengths}, {args.block}")
    if args.child:
        child(args.child, lengths, args.block, args.workdir or None)
        return

    from pe_jax import schemes

    names = [s for s in args.schemes.split(",") if s] or schemes.names()
    for name in names:
        schemes.get(name)  # an unknown name fails before any work
    rows, failed = [], []
    for name in names:
        workdir = os.path.join(args.workdir, name) if args.workdir else ""
        if workdir and not os.path.isdir(workdir):
            workdir = ""
        cmd = [sys.executable, __file__, f"--child={name}", f"--lengths={args.lengths}",
               f"--block={args.block}", f"--workdir={workdir}"]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            failed.append(name)
            continue
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                rows.append(json.loads(line))
                r = rows[-1]
                print(f"{r['scheme']:>18} {r['length']:>6}: peak RSS {r['peak_rss_mib']:7.0f} MiB"
                      f"  {r['seconds']:6.1f} s  loss {r['loss']:.3f}", flush=True)
    if failed:  # keep the results file as it was
        raise SystemExit(f"failed: {', '.join(failed)}; {args.out} left unchanged")
    out = args.out
    if args.merge and os.path.exists(out):
        with open(out) as f:
            rows = [r for r in json.load(f) if r["scheme"] not in names] + rows
        names = list(dict.fromkeys(r["scheme"] for r in rows))
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)

    print("\n| scheme | " + " | ".join(f"{n // 1024}K" if n >= 1024 else str(n)
                                     for n in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for name in names:
        cells = {r["length"]: r["peak_rss_mib"] for r in rows if r["scheme"] == name}
        print(f"| {name} | " + " | ".join(f"{cells[n]:.0f} MiB" if n in cells else "-"
                                         for n in lengths) + " |")


if __name__ == "__main__":
    main()
