"""Every chapter notebook executes under papermill with its smoke parameters, on the shipped
miniatures, and writes sane, tidy CSVs.

    pytest tests/test_notebooks.py        # about 3 minutes on 2 cores

Each notebook runs once (a module-scoped fixture) exactly as `book/build.py --quick` runs it: the
same kernel setup, QUICK=True plus its smoke parameters from book/build.py's NOTEBOOKS table, but
with OUTPUT_DIR and the executed copy in a temporary folder, so a built book is left alone. The
checks: no cell raised, every figure was drawn, every number the prose glues exists, and the
CSVs have the expected columns and values (alpha in [0, 1], ci_low <= alpha <= ci_high, ...).
HYBRIDSPEC_TEST_THREADS=1 gives each kernel one thread (OMP_NUM_THREADS).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pd = pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "book"))
import build  # noqa: E402  (book/build.py: the kernel setup and the smoke parameters)

CHAPTERS = ["00_miniatures", "01_acceptance_gap", "02_scale_invariance", "03_perplexity_predicts_alpha",
            "04_layerskip_vs_component", "05_explorer"]
VERDICT_COLUMNS = ["finding", "metric", "paper", "ours", "verdict"]
VERDICTS = {"reproduced", "partly", "not", "not measured"}
GLUE_ROLE = re.compile(r"\{glue(?::text|:md)?\}`([A-Za-z0-9_]+)(?::[^`]*)?`")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("notebooks")
    saved = dict(os.environ)
    build.prepare_kernel(work)
    threads = os.environ.get("HYBRIDSPEC_TEST_THREADS")
    if threads:
        os.environ["OMP_NUM_THREADS"] = threads
    yield work
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module", params=CHAPTERS)
def executed(request, workdir):
    """Run one notebook with its smoke parameters; return (executed notebook, its results folder)."""
    name = request.param
    src = ROOT / "notebooks" / f"{name}.ipynb"
    assert src.exists(), f"{src} is missing"
    results = workdir / name / "results"
    dst = workdir / name / f"{name}.ipynb"
    params = {"QUICK": True, **build.NOTEBOOKS[name], "OUTPUT_DIR": str(results)}
    build.execute(name, src, dst, params)  # raises NotebookFailed, naming the notebook and the cell
    return name, json.loads(dst.read_text()), results


def _csv(results: Path, filename: str, columns: list[str]) -> "pd.DataFrame":
    path = results / filename
    assert path.exists(), f"{filename} was not written"
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    assert not missing, f"{filename} lacks the column(s) {missing}"
    return frame


def _check_alpha(frame: "pd.DataFrame", filename: str, alpha="alpha", low="ci_low", high="ci_high", allow_nan=False):
    values = frame[[alpha, low, high]]
    if allow_nan:
        values = values.dropna()
    assert len(values), f"{filename}: no measured alpha"
    assert values.notna().all().all(), f"{filename}: NaN in {alpha}/{low}/{high}"
    assert values[alpha].between(0, 1).all(), f"{filename}: {alpha} outside [0, 1]"
    eps = 1e-9
    bad = values[(values[low] > values[alpha] + eps) | (values[alpha] > values[high] + eps)]
    assert bad.empty, f"{filename}: {low} <= {alpha} <= {high} fails for\n{bad}"


def _verdicts(results: Path, name: str, allow_empty: bool = False) -> "pd.DataFrame":
    frame = _csv(results, f"{name}_verdicts.csv", VERDICT_COLUMNS)
    if not allow_empty:
        assert len(frame), f"{name}_verdicts.csv has no row"
    assert set(frame.verdict) <= VERDICTS, f"unknown verdicts {set(frame.verdict) - VERDICTS}"
    return frame


def test_runs_draws_and_glues(executed):
    name, nb, _ = executed
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{name}: a cell raised"
    figures = sum(1 for o in outputs if "image/png" in o.get("data", {}))
    assert figures >= 1, f"{name}: no figure was drawn"
    glued = {o["metadata"]["scrapbook"]["name"] for o in outputs if "scrapbook" in o.get("metadata", {})}
    prose = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    wanted = set(GLUE_ROLE.findall(prose))
    assert wanted <= glued, f"{name}: the prose uses glue keys that no cell glued: {sorted(wanted - glued)}"
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "QUICK = True" in "".join(injected[0]["source"])


def test_csvs_are_tidy_and_sane(executed):
    name, _, results = executed
    if name == "00_miniatures":
        cards = _csv(results, "00_miniatures_cards.csv", ["model", "family", "parameters (M)", "draft/full perplexity",
                                                          "alpha k=2", "alpha k=4"])
        assert "falcon-h1-s" in set(cards.model)
        assert cards[["alpha k=2", "alpha k=4"]].stack().between(0, 1).all()
        assert (cards["draft/full perplexity"] > 0).all()
        log = _csv(results, "00_miniatures_training_log.csv", ["model", "tokens (millions)", "panel", "series", "value"])
        assert len(log) and (log["tokens (millions)"] >= 0).all()
        _csv(results, "00_miniatures_drift.csv", ["model", "metric", "first", "last", "spearman rho"])
        _verdicts(results, name)
    elif name == "01_acceptance_gap":
        rounds = _csv(results, "01_acceptance_one_round.csv", ["role", "model", "draft", "k", "temperature", "n_prompts",
                                                               "alpha", "ci_low", "ci_high", "paper_alpha", "verdict"])
        _check_alpha(rounds, "01_acceptance_one_round.csv")
        assert (rounds.n_prompts == build.NOTEBOOKS[name]["N_PROMPTS"]).all()
        assert set(rounds.k) == {2, 4, 8} and set(rounds.temperature) == {0.0, 0.6}
        generation = _csv(results, "01_generation.csv", ["role", "k", "temperature", "alpha", "per_token_acceptance", "tau",
                                                         "tau_ci_low", "tau_ci_high"])
        _check_alpha(generation, "01_generation.csv", "alpha", "alpha_ci_low", "alpha_ci_high")
        _check_alpha(generation, "01_generation.csv", "per_token_acceptance", "per_token_acceptance_ci_low",
                     "per_token_acceptance_ci_high")
        assert (generation.tau >= 1 - 1e-9).all()
        per_prompt = _csv(results, "01_generation_per_prompt.csv", ["temperature", "identical_to_greedy"])
        greedy = per_prompt[per_prompt.temperature == 0]
        assert len(greedy) and greedy.identical_to_greedy.astype(bool).all(), "speculative greedy != greedy decoding"
        div = _csv(results, "01_divergence.csv", ["role", "tv_mean", "top1_agreement", "kl_mean", "paper_tv_mean"])
        assert div.tv_mean.between(0, 1).all() and div.top1_agreement.between(0, 1).all() and (div.kl_mean >= 0).all()
        gap = _csv(results, "01_gap.csv", ["k", "temperature", "paper_ratio", "ratio", "ci_low", "ci_high", "verdict"])
        assert (gap.paper_ratio > 1).all()
        _verdicts(results, name)
    elif name == "02_scale_invariance":
        alpha = _csv(results, "02_scale_alpha.csv", ["size", "model", "k", "temperature", "alpha", "ci_low", "ci_high"])
        _check_alpha(alpha, "02_scale_alpha.csv")
        test = _csv(results, "02_scale_test.csv", ["k", "difference", "ci_low", "ci_high", "p_value", "verdict"])
        if len(test):
            assert test.p_value.between(0, 1).all()
            assert ((test.ci_low <= test.difference + 1e-9) & (test.difference <= test.ci_high + 1e-9)).all()
        _verdicts(results, name)
    elif name == "03_perplexity_predicts_alpha":
        points = _csv(results, "03_points.csv", ["model", "family", "draft", "ratio", "log10_ratio", "alpha", "ci_low",
                                                 "ci_high", "loo_prediction"])
        _check_alpha(points, "03_points.csv")
        assert (points.ratio > 0).all()
        assert all(math.isclose(math.log10(r), l, abs_tol=1e-9) for r, l in zip(points.ratio, points.log10_ratio))
        fit = _csv(results, "03_fit.csv", ["n_points", "slope_b", "spearman_rho", "loo_mae", "loo_mae_constant"])
        assert int(fit.n_points.iloc[0]) == len(points) >= 3
        _verdicts(results, name)
    elif name == "04_layerskip_vs_component":
        grid = _csv(results, "04_strategies.csv", ["role", "model", "group", "strategy", "fraction", "alpha", "ci_low",
                                                   "ci_high", "note"])
        _check_alpha(grid, "04_strategies.csv", allow_nan=True)
        unmeasured = grid[grid.alpha.isna()]
        assert (unmeasured.role == "transformer").all(), "only the control has not-applicable strategies"
        assert unmeasured.note.str.contains("not applicable").all()
        assert {"component-aware", "LayerSkip", "early exit"} <= set(grid.group)
        _verdicts(results, name)
    elif name == "05_explorer":
        grid = _csv(results, "05_explorer_grid.csv", ["model", "draft", "k", "alpha", "ci_low", "ci_high", "tau", "d_tv",
                                                      "c", "speedup"])
        _check_alpha(grid, "05_explorer_grid.csv")
        assert (grid.tau >= 1 - 1e-9).all() and grid.d_tv.between(0, 1).all()
        assert grid.c.between(0, 1, inclusive="right").all() and (grid.speedup > 0).all()
        assert set(grid.k) == set(build.NOTEBOOKS[name]["K_VALUES"])
        _verdicts(results, name, allow_empty=True)
    else:  # pragma: no cover - CHAPTERS and this test are kept in step
        pytest.fail(f"no CSV checks for {name}")


def test_summary_renders_every_verdict(executed):
    """book/summary.py turns the verdicts files into the summary page's tables."""
    name, _, results = executed
    import summary

    frame = pd.read_csv(results / f"{name}_verdicts.csv")
    page = summary.render(results)
    assert "| claim | paper | ours | verdict |" in page or not len(frame)
    for metric in frame.metric:
        assert summary._cell(metric) in page
    if len(frame):
        assert "smoke parameters" in page  # QUICK=True is recorded and warned about
