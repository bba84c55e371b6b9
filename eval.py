"""Evaluate a trained pe_jax workdir at several lengths.

  python eval.py --workdir=W --lengths=128,256,512,1024,2048

Writes W/eval.json (one object per length: length, loss, ppl; or length, error) and
W/eval.png.

RoPE context extension without training: a Hugging Face ``rope_scaling`` dict applied to
the trained model, e.g.

  python eval.py --workdir=W --rope_scaling='{"rope_type": "yarn", "factor": 4}'

writes W/eval_yarn.json and W/eval_yarn.png (W/eval.json is left alone). For dynamic,
yarn, llama3 and longrope a missing original_max_position_embeddings defaults to the
run's training length (seq_len; rope_max_position_embeddings instead when a fine-tune set
it). Only the 'rope' scheme accepts it.

Sliding-window evaluation (each token scored once, with up to length - stride tokens
of left context; W/eval_sliding.json):

  python eval.py --workdir=W --lengths=128,512,2048 --protocol=sliding --stride=32

Lengths above 2048 are evaluated with blockwise attention, in memory linear in length.
Generation with the KV cache: sample.py.

Precision audit (no checkpoint needed; W is created if missing):

  python eval.py --audit --workdir=W

prints and writes W/audit.json and W/audit.png: distinct positions kept by bfloat16 and
float16, and the errors of bf16-built RoPE angles, sinusoidal tables and q.k logits by
position band up to 64K (pe_jax.precision).
"""

from absl import app, flags, logging

from pe_jax import evaluate, metrics, precision

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train.py.")
_LENGTHS = flags.DEFINE_string("lengths", "128,256,512,1024,2048", "Comma-separated lengths.")
_ROPE_SCALING = flags.DEFINE_string(
    "rope_scaling", None, "Hugging Face rope_scaling dict as JSON, applied before evaluating."
)
_PROTOCOL = flags.DEFINE_enum(
    "protocol", "nonoverlapping", ["nonoverlapping", "sliding"],
    "nonoverlapping windows, or sliding windows every --stride tokens (ALiBi paper).",
)
_STRIDE = flags.DEFINE_integer("stride", None, "Sliding-window stride (default length / 4).")
_AUDIT = flags.DEFINE_bool(
    "audit", False, "Run the precision audit into the workdir instead of evaluating."
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    metrics.quiet_library_logs()
    if _AUDIT.value:
        print(precision.format_audit(precision.write_audit(_WORKDIR.value)))
        return
    if _STRIDE.value is not None and _STRIDE.value <= 0:
        raise app.UsageError(f"--stride must be positive, got {_STRIDE.value}")
    results = evaluate.evaluate_workdir(
        _WORKDIR.value, evaluate.parse_lengths(_LENGTHS.value), rope_scaling=_ROPE_SCALING.value,
        protocol=_PROTOCOL.value, stride=_STRIDE.value,
    )
    for r in results:
        if "loss" in r:
            print(f"length {r['length']:>6}: loss {r['loss']:.4f}  ppl {r['ppl']:.3f}")
        else:
            print(f"length {r['length']:>6}: n/a ({r['error']})")


if __name__ == "__main__":
    app.run(main)
