"""Evaluate a trained pe_jax workdir at several lengths.

  python eval.py --workdir=W --lengths=128,256,512,1024,2048

Writes W/eval.json (one object per length: length, loss, ppl; or length, error) and
W/eval.png.
"""

from absl import app, flags, logging

from pe_jax import evaluate, metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train.py.")
_LENGTHS = flags.DEFINE_string("lengths", "128,256,512,1024,2048", "Comma-separated lengths.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    metrics.quiet_library_logs()
    results = evaluate.evaluate_workdir(_WORKDIR.value, evaluate.parse_lengths(_LENGTHS.value))
    for r in results:
        if "loss" in r:
            print(f"length {r['length']:>6}: loss {r['loss']:.4f}  ppl {r['ppl']:.3f}")
        else:
            print(f"length {r['length']:>6}: n/a ({r['error']})")


if __name__ == "__main__":
    app.run(main)
