"""Write the tutorial notebooks from the cell sources below (outputs stay empty).

  python notebooks/make_notebooks.py     # rewrites notebooks/0*.ipynb

The notebooks are generated so that a review reads this file, not JSON. Each runs top to
bottom on a CPU; ``PE_JAX_NOTEBOOK_QUICK=1`` shrinks every run to a smoke size (the tests
execute them that way: tests/test_report_and_notebooks.py).
"""

from __future__ import annotations

import os

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''\
# Setup. On Colab, first put a clone of the pe_jax repository on the machine (upload it, or
# `git clone <your copy of the repository>` where the network allows), then this cell
# installs it with `pip install -e` from that clone. Elsewhere pe_jax is imported from the
# repository this notebook sits in (run `pip install -e .` there once).
import os
import sys

if "google.colab" in sys.modules:
    import subprocess

    REPO = os.environ.get("PE_JAX_REPO", "/content/pe_jax")  # path of the clone
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", REPO], check=True)
    os.chdir(REPO)
else:  # a local checkout: run from its root, whether started in notebooks/ or the root
    if not os.path.isdir("pe_jax") and os.path.isdir(os.path.join("..", "pe_jax")):
        os.chdir("..")
sys.path.insert(0, os.getcwd())  # `configs` is imported from the repository root

import jax

QUICK = os.environ.get("PE_JAX_NOTEBOOK_QUICK") == "1"  # smoke sizes (the tests set it)
# Runs go under PE_JAX_NOTEBOOK_WORKDIR when set (the tests), else the temp directory.
RUNS = os.environ.get("PE_JAX_NOTEBOOK_WORKDIR") or __import__("tempfile").gettempdir()
print(f"JAX backend: {jax.default_backend().upper()} ({jax.device_count()} device(s): "
      f"{jax.devices()[0].device_kind}); quick mode: {QUICK}")
'''

TINY = '''\
def sized(config, quick_steps, full_steps):
    """The default config shrunk for quick mode, or kept at its default model size."""
    if QUICK:
        config.update(dict(d_model=32, num_layers=1, num_heads=2, seq_len=16, batch_size=8,
                           warmup_steps=2, log_every=5, eval_tokens=256,
                           eval_batch_tokens=1024))
    config.update(dict(num_steps=quick_steps if QUICK else full_steps,
                       checkpoint_every=quick_steps if QUICK else full_steps,
                       eval_tokens=config.eval_tokens if QUICK else 8192))
    return config
'''


def quickstart() -> list:
    return [
        v4.new_markdown_cell(
            "# pe_jax quickstart\n\n"
            "Train one small byte-level decoder with RoPE on the Python standard library's "
            "own source (read from this interpreter, no download), then score it at 1, 2, 4 "
            "and 8 times its training length. About a minute on a laptop CPU; seconds with "
            "`PE_JAX_NOTEBOOK_QUICK=1`."),
        v4.new_code_cell(SETUP),
        v4.new_code_cell(
            "from absl import logging\n"
            "from IPython.display import Image, display\n\n"
            "from configs import default\n"
            "from pe_jax import data, evaluate, train\n\n"
            "logging.set_verbosity(logging.WARNING)  # the training log is long\n"
            + TINY),
        v4.new_markdown_cell(
            "## Train\n\n`train_and_evaluate` writes orbax checkpoints and `metrics.jsonl` "
            "into the workdir; rerunning the cell with the same workdir resumes or skips."),
        v4.new_code_cell(
            "config = sized(default.get_config(), quick_steps=20, full_steps=300)\n"
            "config.pe = \"rope\"\n"
            "workdir = os.path.join(RUNS, f\"pe_jax_nb01_{'quick' if QUICK "
            "else 'full'}\")\n"
            "corpus = data.load(config.data)\n"
            "last = train.train_and_evaluate(config, workdir, corpus)\n"
            "print(f\"trained {config.pe} at L = {config.seq_len}: last logged metrics {last}\")"),
        v4.new_markdown_cell(
            "## Evaluate past the training length\n\nEvery length scores the same held-out "
            "bytes in non-overlapping windows that start at position 0."),
        v4.new_code_cell(
            "params, step = train.restore_params(workdir, config)\n"
            "lengths = [config.seq_len * k for k in (1, 2, 4, 8)]\n"
            "results = evaluate.evaluate_lengths(config, params, corpus.val, lengths)\n"
            "for r in results:\n"
            "    print(f\"length {r['length']:5d} ({r['length'] // config.seq_len}L): \"\n"
            "          f\"loss {r['loss']:.3f} nats/byte, ppl {r['ppl']:.2f}\")\n"
            "assert all(r[\"loss\"] == r[\"loss\"] for r in results)  # finite, not NaN"),
        v4.new_code_cell(
            "plot_path = os.path.join(workdir, \"quickstart.png\")\n"
            "evaluate.plot({config.pe: results}, plot_path, config.seq_len)\n"
            "display(Image(filename=plot_path))"),
        v4.new_markdown_cell(
            "Next: `02_new_scheme.ipynb` writes a scheme of your own; `python report.py "
            "--workdir=W` measures every claim of REFERENCE.md on a full set of runs."),
    ]


DECAY_SCHEME = '''\
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from pe_jax import schemes
from pe_jax.schemes import base


@dataclasses.dataclass(frozen=True)
class HeadDecayOptions:
    init: float = -2.0  # softplus(-2) ~ 0.13 logits per position at initialisation


class HeadDecay(base.PositionalScheme):
    """A learned per-head decay on the logits: bias[h, i, j] = -softplus(w_h) * (i - j).

    ALiBi with its fixed slopes replaced by learned ones: every head chooses how fast
    its attention forgets. Positions enter only through i - j, so shifting all of them
    leaves the logits alone.
    """

    enters_at = ("bias",)

    def setup(self):
        init = (self.options or HeadDecayOptions()).init
        self.w_H = self.param("w", nn.initializers.constant(init), (self.dims.num_heads,))

    def bias(self, q_pos_BxL, k_pos_BxK, layer=0):
        distance_BxLxK = (q_pos_BxL[:, :, None] - k_pos_BxK[:, None, :]).astype(jnp.float32)
        rate_H = nn.softplus(self.w_H.astype(jnp.float32))
        return -rate_H[None, :, None, None] * distance_BxLxK[:, None]


schemes.unregister("head_decay")  # so that rerunning this cell re-registers cleanly
schemes.register(
    "head_decay", HeadDecay,
    lambda config: HeadDecayOptions(base.config_get(config, "head_decay_init", -2.0)),
    summary="learned per-head linear decay bias on logits",
)
print("registered:", "head_decay" in schemes.names())
'''

INVARIANTS = '''\
import flax.linen as nn
import ml_collections
import numpy as np

from pe_jax import model


def tiny_decoder(pe):
    cfg = model.ModelConfig(pe=pe, d_model=32, num_layers=1, num_heads=4, max_len=64,
                            pe_config=ml_collections.ConfigDict({"seq_len": 64}))
    decoder = model.Decoder(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, 256)
    positions = jnp.broadcast_to(jnp.arange(24, dtype=jnp.int32), tokens.shape)
    params = nn.unbox(jax.jit(decoder.init)(jax.random.key(0), tokens, positions)["params"])
    return decoder, params, tokens, positions


decoder, params, tokens, positions = tiny_decoder("head_decay")
apply = jax.jit(decoder.apply)  # one compilation instead of op-by-op dispatch
logits = apply({"params": params}, tokens, positions)

# 1. Shift invariance: every position + 1000 must leave the whole model's logits alone.
#    The bias reads only i - j (exact integers), so the tolerance covers float32 sums only.
shifted = apply({"params": params}, tokens, positions + 1000)
shift_change = float(jnp.max(jnp.abs(shifted - logits)))
np.testing.assert_allclose(shifted, logits, atol=1e-5)

# 2. Causality by gradient: the logits at position t have zero gradient from the input
#    embeddings of tokens that occur only after t.
t = 10
def logits_at_t(table_VxD):
    out = apply({"params": {**params, "embed": {"embedding": table_VxD}}}, tokens, positions)
    return out[:, t].sum()

grad = jax.jit(jax.grad(logits_at_t))(params["embed"]["embedding"])
later = np.unique(np.asarray(tokens[:, t + 1:]))
earlier = np.unique(np.asarray(tokens[:, : t + 1]))
only_later = np.setdiff1d(later, earlier)  # rows used only by tokens after t
assert float(jnp.abs(grad[only_later]).max()) == 0.0, "position t sees the future"
assert float(jnp.abs(grad[earlier]).max()) > 0.0, "position t sees nothing at all"
print(f"shift by 1000: max |logit change| = {shift_change:.2e}; causality: ok "
      f"({len(only_later)} token rows used only after t={t} get zero gradient)")
'''

COMPARE = '''\
from absl import logging
from IPython.display import Image, display

from configs import default
from pe_jax import data, evaluate, train

logging.set_verbosity(logging.WARNING)
corpus = data.load("stdlib")
root = os.path.join(RUNS, f"pe_jax_nb02_{'quick' if QUICK else 'full'}")
multiples = (1, 4) if QUICK else (1, 2, 4, 8)
results = {}
for pe in ("head_decay", "alibi"):
    config = sized(default.get_config(), quick_steps=10, full_steps=300)
    config.pe = pe
    workdir = os.path.join(root, pe)
    train.train_and_evaluate(config, workdir, corpus)
    params, _ = train.restore_params(workdir, config)
    results[pe] = evaluate.evaluate_lengths(config, params, corpus.val,
                                            [config.seq_len * k for k in multiples])

print("scheme      " + "".join(f"{k}L".rjust(9) for k in multiples))
for pe, rs in results.items():
    print(f"{pe:12s}" + "".join(f"{r['loss']:9.3f}" for r in rs))
plot_path = os.path.join(root, "comparison.png")
evaluate.plot(results, plot_path, config.seq_len)
display(Image(filename=plot_path))
'''


def new_scheme() -> list:
    return [
        v4.new_markdown_cell(
            "# Write a new positional scheme\n\n"
            "A scheme is a Linen module that overrides the hook where it enters attention "
            "(`embed`, `rotate`, `bias`, `logits` or `values`; see README \"Adding a "
            "scheme\"). Here: a learned per-head decay bias, registered under "
            "`head_decay`, checked for its invariants, then trained next to ALiBi."),
        v4.new_code_cell(SETUP),
        v4.new_code_cell(DECAY_SCHEME),
        v4.new_markdown_cell(
            "## Its invariants, inline\n\nThe same two checks the test suite runs on "
            "every registered scheme's family: whole-model logits unchanged under a shared "
            "position shift (a relative scheme), and causality by gradient."),
        v4.new_code_cell(INVARIANTS),
        v4.new_markdown_cell(
            "## A small comparison\n\nSame model, data, seed and steps for both schemes; "
            "loss by evaluation length."),
        v4.new_code_cell(TINY + "\n\n" + COMPARE),
    ]


AUDIT = '''\
from IPython.display import Image, display

from pe_jax import precision

audit = precision.audit()
print(precision.format_audit(audit))
outdir = os.path.join(RUNS, f"pe_jax_nb03_{'quick' if QUICK else 'full'}")
os.makedirs(outdir, exist_ok=True)
precision.plot_audit(audit, os.path.join(outdir, "audit.png"))
display(Image(filename=os.path.join(outdir, "audit.png")))
'''

COLLISIONS = '''\
import matplotlib.pyplot as plt
import numpy as np

ns = np.unique(np.logspace(4, 16, 25, base=2).astype(int))
fig, ax = plt.subplots(figsize=(6, 3.6))
for dtype in ("bfloat16", "float16"):
    ax.plot(ns, [precision.distinct_positions(n, dtype) for n in ns], marker=".", label=dtype)
ax.plot(ns, ns, color="gray", linestyle=":", label="all distinct")
ax.set(xscale="log", yscale="log", xlabel="positions 0..N-1", ylabel="distinct values")
ax.legend()
ax.grid(True, alpha=0.3)
plt.show()
assert precision.distinct_positions(4096, "bfloat16") == 769  # REFERENCE.md claim 22
'''

EXTENSION = '''\
from absl import logging

from configs import default
from pe_jax import data, evaluate, train

logging.set_verbosity(logging.WARNING)
config = sized(default.get_config(), quick_steps=15, full_steps=300)
config.pe = "rope"
workdir = os.path.join(outdir, "rope")
corpus = data.load(config.data)
train.train_and_evaluate(config, workdir, corpus)
restored = train.restore_params(workdir, config)  # scaling changes no parameter

factor = 4
multiples = (1, 4) if QUICK else (1, 2, 4, 8)
lengths = [config.seq_len * k for k in multiples]
rules = {
    "none": None,
    "linear": {"rope_type": "linear", "factor": factor},
    "yarn": {"rope_type": "yarn", "factor": factor},
}
if not QUICK:
    rules["ntk"] = {"rope_type": "ntk", "factor": factor}
    rules["dynamic"] = {"rope_type": "dynamic", "factor": factor}
results = {}
for name, rope_scaling in rules.items():
    results[name] = evaluate.evaluate_workdir(workdir, lengths, corpus,
                                              rope_scaling=rope_scaling, restored=restored)
print("rule     " + "".join(f"{k}L".rjust(9) for k in multiples))
for name, rs in results.items():
    print(f"{name:8s} " + "".join(f"{r['loss']:9.3f}" for r in rs))
'''

EXTENSION_PLOT = '''\
plot_path = os.path.join(outdir, "extension.png")
evaluate.plot(results, plot_path, config.seq_len)
display(Image(filename=plot_path))
'''


def precision_and_extension() -> list:
    return [
        v4.new_markdown_cell(
            "# Low precision and context extension\n\n"
            "Part 1: the precision audit (pure numpy): what bfloat16 does to integer "
            "positions and to RoPE and sinusoidal tables, against pe_jax's float32 angles "
            "(REFERENCE.md claims 22-23). Part 2: a small RoPE checkpoint evaluated past "
            "its training length under Hugging Face `rope_scaling` rules, with no "
            "fine-tune (the full job with fine-tunes: `configs/extension.py`)."),
        v4.new_code_cell(SETUP),
        v4.new_code_cell(AUDIT),
        v4.new_markdown_cell("Distinct values that the integer positions 0..N-1 keep when "
                             "cast to a 16-bit float:"),
        v4.new_code_cell(COLLISIONS),
        v4.new_markdown_cell(
            "## Context extension on a tiny trained checkpoint\n\nOne RoPE model trained "
            "at L, then each rule with factor 4 applied at evaluation only."),
        v4.new_code_cell(TINY + "\n\n" + EXTENSION),
        v4.new_code_cell(EXTENSION_PLOT),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_new_scheme.ipynb": new_scheme,
    "03_precision_and_extension.ipynb": precision_and_extension,
}


def build(name: str) -> nbformat.NotebookNode:
    notebook = v4.new_notebook(cells=NOTEBOOKS[name]())
    for index, cell in enumerate(notebook.cells):  # fixed ids: a rewrite diffs cleanly
        cell.id = f"{name[:2]}-{index:02d}"
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def main() -> None:
    for name in NOTEBOOKS:
        notebook = build(name)
        nbformat.validate(notebook)
        path = os.path.join(HERE, name)
        with open(path, "w") as f:
            nbformat.write(notebook, f)
        print("wrote", path)


if __name__ == "__main__":
    main()
