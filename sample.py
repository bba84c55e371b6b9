"""Generate bytes from a trained pe_jax workdir with the KV cache.

  python sample.py --workdir=W --prompt="def main(" --max_new_tokens=200 \
      --temperature=0.8 --top_k=40
"""

import sys

from absl import app, flags, logging

from pe_jax import decode, evaluate, metrics, train

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train.py.")
_PROMPT = flags.DEFINE_string("prompt", "def ", "Text to continue (UTF-8 bytes).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Bytes to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 40, "Sample among the k likeliest bytes (0 = all).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metrics.quiet_library_logs()
    config = evaluate.load_config(_WORKDIR.value)
    state, step = train.restore_latest(_WORKDIR.value, config)
    logging.info("sampling from %s (%s) at step %d", _WORKDIR.value, config.pe, step)
    prompt = _PROMPT.value.encode()
    out = decode.sample(train.model_config(config), state.params, prompt, _MAX_NEW.value,
                        _TEMPERATURE.value, _TOP_K.value, _SEED.value)
    sys.stdout.write((prompt + out).decode("utf-8", errors="replace") + "\n")


if __name__ == "__main__":
    app.run(main)
