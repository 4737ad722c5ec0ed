"""The speed benchmark (bench/bench.py), smoke-run on tiny random models of every family: the JSON
schema, and that every speculative run equalled greedy decoding. NO timing assertions: the numbers
of a smoke run on a shared machine mean nothing; `make bench` is where speed is measured."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys

import pytest
import torch

import tiny_models as tm
from conftest import ROOT, save_with_tokenizer

ROW_KEYS = {"model", "draft", "k", "context", "greedy_tps", "spec_tps", "speedup", "alpha", "tau", "c", "v",
            "predicted_speedup", "prediction_error", "rollback_fraction", "lossless", "kind", "rollback_method"}
PEERS = ("hf_generate_ratio", "paper_protocol_ratio", "hf_early_exit_ratio")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    models = [
        save_with_tokenizer(tm.scale_attention(tm.falcon_h1(1, layers=4, init=0.3), 0.1), folder / "tiny-falcon-h1"),
        save_with_tokenizer(tm.scale_attention(tm.qwen3_5(2, layers=4, init=0.3), 0.1), folder / "tiny-qwen3.5"),
        save_with_tokenizer(tm.scale_attention(tm.qwen2(3, layers=4, init=0.3), 0.3), folder / "tiny-qwen2"),
    ]
    out = folder / "latest.json"
    bench = _load("bench")
    threads = torch.get_num_threads()
    try:
        code = bench.main(["--models", *map(str, models), "missing-miniature", "--contexts", "16,40", "--ks", "1,3",
                           "--new-tokens", "8", "--repeats", "1", "--peer-repeats", "1", "--micro-repeats", "1",
                           "--paper-ks", "2", "--paper-new-tokens", "5", "--hf-ks", "2", "--growth", "6,10",
                           "--no-fit-longest", "--long-ks", "",
                           "--no-progress", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return json.loads(out.read_text())


def test_rows_cover_the_grid_and_hold_the_schema(smoke):
    rows = smoke["rows"]
    # hybrids: attention_off, layer_skip, early_exit; the control: layer_skip, early_exit; 2 k x 2 contexts
    assert len(rows) == (3 + 3 + 2) * 2 * 2
    assert {r["model"] for r in rows} == {"tiny-falcon-h1", "tiny-qwen3.5", "tiny-qwen2"}
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["kind"] == "measured"
        for key in ("greedy_tps", "spec_tps", "c", "v", "tau", "predicted_speedup"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (key, row[key])
        assert 0.0 <= row["alpha"] <= 1.0 and 0.0 <= row["rollback_fraction"] <= 1.0
    methods = {r["family"]: r["rollback_method"] for r in rows if r["draft"] == "layer_skip"}
    assert methods == {"parallel": "per-position states", "sequential": "per-position states", "transformer": "crop"}


def test_every_speculative_run_equalled_greedy(smoke):
    assert all(row["lossless"] for row in smoke["rows"])
    assert smoke["summary"]["all_lossless"] is True
    assert all(p["same_tokens"] for p in smoke["peers"]["hf_generate_ratio"])
    assert all(p["ours_lossless"] and p["paper_protocol_lossless"] for p in smoke["peers"]["paper_protocol_ratio"])
    assert all(p["same_tokens"] for p in smoke["peers"]["hf_early_exit_ratio"])


def test_hf_early_exit_drafts_as_many_tokens_per_step_as_ours(smoke):
    """transformers reads the draft length from the assistant's generation_config, not from
    generate()'s arguments: the comparison is only like for like if both sides drafted alike."""
    for peer in smoke["peers"]["hf_early_exit_ratio"]:
        assert peer["theirs_mean_drafted"] == pytest.approx(peer["ours_mean_drafted"]), peer
        assert peer["theirs_mean_drafted"] > 1.0  # k = 2 here: more than the one token of the defaults


def test_peers_name_model_and_k(smoke):
    peers = smoke["peers"]
    assert set(PEERS) <= set(peers) and "cost_growth" in peers
    assert len(peers["hf_generate_ratio"]) == 3 * 2
    assert len(peers["paper_protocol_ratio"]) == 3 * 2
    assert {p["model"] for p in peers["hf_early_exit_ratio"]} == {"tiny-qwen2"}  # the transformer control only
    for name in PEERS:
        for peer in peers[name]:
            assert {"model", "k", "context", "ratio", "ours_tps", "theirs_tps"} <= set(peer)
            assert peer["ratio"] > 0
    assert {p["k"] for p in peers["paper_protocol_ratio"]} == {2}
    assert {p["new_tokens"] for p in peers["cost_growth"]} == {6, 10}
    assert smoke["summary"]["hf_generate_ratio"]["n"] == 6


def test_cost_points_break_even_and_predicted_rows(smoke):
    views = {(p["model"], p["view"]) for p in smoke["cost_points"]}
    assert ("tiny-falcon-h1", "draft_attention_off") in views and ("tiny-qwen2", "full_4") in views
    fits = [b for b in smoke["break_even"] if b["kind"] == "measured-fit"]
    assert len(fits) == (3 + 3 + 2) * 2
    predicted = smoke["predicted"]
    assert predicted and all(r["kind"] == "predicted" for r in predicted)
    assert {r["model"] for r in predicted} == {"falcon-h1-0.5b", "qwen3.5-0.8b", "qwen2.5-0.5b"}
    assert any(b["kind"] == "predicted" for b in smoke["break_even"])
    assert {"command", "machine", "seed", "threads", "grid"} <= set(smoke["meta"])


def test_cost_model_behaves_like_its_physics():
    cm = _load("cost_model")
    rows = cm.predicted_rows(contexts=(128, 16384), ks=(2,))
    c = {(r["model"], r["draft"], r["context"]): r["c"] for r in rows}
    # removing attention saves more the longer the context (its KV reads grow, the rest does not)
    assert c[("falcon-h1-0.5b", "attention_off", 16384)] < c[("falcon-h1-0.5b", "attention_off", 128)] < 1
    assert c[("qwen3.5-0.8b", "attention_off", 16384)] < c[("qwen3.5-0.8b", "attention_off", 128)] < 1
    # batch-1 decoding is memory-bound: verifying 3 tokens costs about one forward
    assert all(1.0 <= r["v"] < 1.05 for r in rows)
    assert all(0 < r["c"] < 1 for r in rows)
    p = cm.iid_acceptance(0.68, 2)
    assert cm.iid_alpha(p, 2) == pytest.approx(0.68)


def test_chapter_06_reads_the_benchmark_json(smoke, tmp_path):
    """notebooks/06_when_does_it_pay.ipynb runs on a fresh benchmark JSON: no cell raises, it draws,
    every number its prose glues exists, and it writes its verdicts for the results summary."""
    pytest.importorskip("papermill")
    pd = pytest.importorskip("pandas")
    sys.path.insert(0, str(ROOT / "book"))
    import build

    saved = dict(os.environ)  # prepare_kernel edits the environment: put it back afterwards
    try:
        os.environ["OMP_NUM_THREADS"] = "1"
        build.prepare_kernel(tmp_path)
        _run_chapter(build, smoke, tmp_path, pd)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _run_chapter(build, smoke, tmp_path, pd):
    results = tmp_path / "latest.json"
    results.write_text(json.dumps(smoke))
    out = tmp_path / "results"
    executed = tmp_path / "06.ipynb"
    params = {"QUICK": True, **build.NOTEBOOKS["06_when_does_it_pay"], "RESULTS": str(results), "FALLBACK": "",
              "RUN_IF_MISSING": False, "OUTPUT_DIR": str(out)}
    build.execute("06_when_does_it_pay", ROOT / "notebooks" / "06_when_does_it_pay.ipynb", executed, params)
    nb = json.loads(executed.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) >= 4
    glued = {o["metadata"]["scrapbook"]["name"] for o in outputs if "scrapbook" in o.get("metadata", {})}
    prose = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    wanted = set(re.findall(r"\{glue:text\}`([A-Za-z0-9_]+)(?::[^`]*)?`", prose))
    assert wanted and wanted <= glued, sorted(wanted - glued)
    verdicts = pd.read_csv(out / "06_when_does_it_pay_verdicts.csv")
    assert list(verdicts.columns[:5]) == ["finding", "metric", "paper", "ours", "verdict"]
    assert set(verdicts.verdict) <= {"reproduced", "partly", "not", "not measured"}
