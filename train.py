"""Train a pe_jax decoder, or run the main comparison job or the RoPE extension job.

  python train.py --workdir=W --config=configs/default.py [--config.pe=alibi ...]
  python train.py --workdir=W --config=configs/compare.py
  python train.py --workdir=W --config=configs/extension.py
"""

from absl import app, flags, logging
from ml_collections import config_flags

from pe_jax import compare, extension, metrics, sharding, train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.mark_flags_as_required(["workdir", "config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    metrics.quiet_library_logs()
    config = flags.FLAGS.config
    sharding.initialize_distributed(config)  # multi-host only; before devices are touched
    if config.job == "compare":
        compare.run(config, _WORKDIR.value)
    elif config.job == "train":
        train.train_and_evaluate(config, _WORKDIR.value)
    elif config.job == "extension":
        extension.run(config, _WORKDIR.value)
    else:
        raise ValueError(
            f"config.job must be 'train', 'compare' or 'extension', got {config.job!r}"
        )


if __name__ == "__main__":
    app.run(main)
