"""The measured report in quick mode, and every tutorial notebook executed top to bottom."""

import os
import re
import sys

import numpy as np
import pytest

from pe_jax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("01_quickstart.ipynb", "02_new_scheme.ipynb", "03_precision_and_extension.ipynb")
SECTIONS = ("## Extrapolation", "## Relative ability", "## Depth", "## Low precision",
            "### Training with bfloat16-built tables", "## RoPE long-term decay",
            "## Context extension", "## Cost", "## Summary table, measured")
VERDICT = re.compile(r"\*\*Verdict: (held|did not hold at this scale|not measured)\*\*"
                     r"|\*\*Verdict: (held|did not hold at this scale|not measured)[ (]")


def test_quick_report_has_every_section_computed_verdicts_and_figures(tmp_path):
    text = report.run(str(tmp_path), quick=True)
    assert open(tmp_path / "REPORT.md").read() == text
    for heading in SECTIONS:
        assert heading in text, heading
    verdicts = [line for line in text.splitlines() if "Verdict:" in line]
    assert all(VERDICT.search(line) for line in verdicts), verdicts
    # Claims 1-5, 16, 20 (extrapolation), relative ability, 22-23, 8-9, 6.
    claims = sorted({m for line in verdicts for m in re.findall(r"Claim (\d+)", line)}, key=int)
    assert claims == ["1", "2", "3", "4", "5", "6", "8", "9", "16", "17", "20", "22", "23", "24"]
    assert any("Additive codes fade through depth** (" in line for line in verdicts)
    assert any("Relative ability** —" in line for line in verdicts)
    # The pure claims do not depend on training: their verdicts are fixed facts.
    for number in ("22", "23", "8"):
        line = next(x for x in verdicts if f"Claim {number}**" in x)
        assert "Verdict: held" in line, line
    # Quick mode runs sinusoidal and ALiBi: relative ability is measured for both.
    assert "| sinusoidal | +100 |" in text and "| alibi | +100 |" in text
    for png in ("extrapolation.png", "audit.png", "rope_decay.png", "cost.png",
                "depth_probe.png", "precision_positions.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    assert "not measured: no `extension.md`" in text


def test_rope_decay_bound_matches_its_definition_at_small_distances():
    # s = 0: every partial sum S_j has j terms equal to 1, so the mean of |S_j| over
    # j = 1..d/2 is (d/2 + 1) / 2.
    np.testing.assert_allclose(report.rope_decay_bound(np.array([0]), 64)[0], 16.5)
    # d = 2: one frequency, theta_0 = 1, |S_1(s)| = 1 for every s.
    np.testing.assert_allclose(report.rope_decay_bound(np.arange(5), 2), np.ones(5))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom_in_quick_mode(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("PE_JAX_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("PE_JAX_NOTEBOOK_WORKDIR", str(tmp_path))
    # The kernel ("python3": this interpreter's ipykernel) inherits the environment; it
    # runs on one CPU device as a user's would, not on the suite's 8 fake ones.
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    stdout = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                     for o in c.outputs if o.output_type == "stream")
    assert "JAX backend: CPU" in stdout and "quick mode: True" in stdout


def test_generated_notebooks_match_their_generator():
    nbformat = pytest.importorskip("nbformat")
    sys.path.insert(0, os.path.join(ROOT, "notebooks"))
    try:
        import make_notebooks
    finally:
        sys.path.pop(0)
    for name in NOTEBOOKS:
        on_disk = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
        assert on_disk == make_notebooks.build(name), f"rerun notebooks/make_notebooks.py ({name})"


@pytest.mark.parametrize("schemes,seeds,match", [(",", "", "names no scheme"),
                                                  ("", "x", "comma-separated integers")])
def test_report_refuses_an_empty_scheme_list_and_bad_seeds(schemes, seeds, match):
    with pytest.raises(ValueError, match=match):
        report.report_config(True, schemes, seeds)
