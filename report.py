"""Regenerate W/REPORT.md: REFERENCE.md's claims measured on runs trained or found in W.

  python report.py --workdir=W           # full: 7 schemes x 3 seeds, ~45 min on 2 CPU cores
  python report.py --workdir=W --quick   # smoke run: tiny model, 2 schemes, under a minute

A rerun reuses finished runs and cached evaluations, so it only rewrites the report.
"""

from absl import app, flags, logging

from pe_jax import metrics, report

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the runs and of REPORT.md.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny config: a smoke run of every section.")
_SCHEMES = flags.DEFINE_string("schemes", "", "Comma-separated schemes (default: the mode's).")
_SEEDS = flags.DEFINE_string("seeds", "", "Comma-separated seeds (default: 0,1,2; quick: 0).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    metrics.quiet_library_logs()
    report.run(_WORKDIR.value, quick=_QUICK.value, schemes=_SCHEMES.value,
               seeds=_SEEDS.value)


if __name__ == "__main__":
    app.run(main)
