#!/usr/bin/env python
"""hybridspec speed benchmark (issue 5): when does self-speculative decoding pay?

    make bench                 # = python bench/bench.py          (the full grid; ~40 min on one CPU thread)
    make bench QUICK=1         # = python bench/bench.py --quick  (a reduced grid; a few minutes)
    python bench/bench.py --models falcon-h1-s --contexts 128 --ks 2,4 --repeats 1 --out /tmp/b.json

Batch size 1, greedy (T = 0), prompts cut from the shipped held-out text (``hs.evaluation_sequences``
concatenated), one prompt per repeat, medians over repeats. Prints a table and writes
``bench/results/latest.json`` (see ``--out``) with:

- ``rows``: MEASURED, one per model, draft, k and context: greedy_tps, spec_tps, speedup, alpha, tau,
  c, v, predicted_speedup, prediction_error, rollback_fraction, lossless, ... (``DEFINITIONS``);
- ``peers``: the side-by-side ratios of the same run: ``hf_generate_ratio`` (our greedy baseline vs
  transformers' ``generate(do_sample=False)``), ``paper_protocol_ratio`` (ours vs the paper's
  protocol, re-implemented in bench/paper_protocol.py), ``hf_early_exit_ratio`` (ours vs
  ``generate(assistant_early_exit=n)`` on the transformer control), and ``cost_growth`` (time per new
  token at 64, 256 and 1024 new tokens); each row names the model and k it used;
- ``cost_points``: the per-token forward times behind c and v at every context (plus the longest
  context the model allows), and ``break_even``: the context at which speculation starts to pay,
  from a linear fit of those times (kind ``measured-fit``) and, for the paper's real checkpoints,
  from the analytic cost model (kind ``predicted``; bench/cost_model.py);
- ``predicted``: the cost model's rows for the real checkpoints (kind ``predicted``: computed from
  their configs, NOT measured);
- ``meta``: the command, machine, versions, threads, seed and grid.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import cost_model  # noqa: E402
import hybridspec_core as hs  # noqa: E402
import paper_protocol  # noqa: E402

DEFAULT_MODELS = ("falcon-h1-s", "qwen3.5-s", "qwen2.5-s", "falcon-h1-m")
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"

DEFINITIONS = {
    "greedy_tps": "decode tokens/s of hs.greedy_generate: (N-1) / (time(N new tokens) - time(1 new token)), medians",
    "spec_tps": "decode tokens/s of hs.speculative_generate: (new-1) / (stats.time_total - stats.time_prefill), "
                "median over repeats (the prefill of both views is left out, as it is for greedy)",
    "speedup": "spec_tps / greedy_tps (decode only); e2e_speedup: the same with prefills included",
    "alpha": "the paper's acceptance rate: mean over steps of accepted / k (pooled over repeats)",
    "tau": "new tokens per verify forward, (new-1) / verify_forwards (pooled over repeats)",
    "c": "one cached 1-token forward of the draft view / one of the full model, at that context (medians)",
    "v": "one cached (k+1)-token forward of the full model / one 1-token forward, at that context (medians), "
         "with the chunk sizes hybridspec uses while decoding",
    "predicted_speedup": "tau / (k c + v)",
    "prediction_error": "speedup / predicted_speedup - 1",
    "rollback_fraction": "stats.time_rollback / (time_draft + time_verify + time_rollback): rollback and "
                         "bookkeeping (state copies, restores, crops, re-feeds, emitting tokens) per step",
    "lossless": "the speculative tokens equalled hs.greedy_generate's in every repeat",
    "hf_generate_ratio": "our greedy tokens/s / transformers generate(do_sample=False) tokens/s, end to end, same "
                         "prompt and new tokens (>= 0.95 is the target)",
    "paper_protocol_ratio": "our speculative tokens/s / the paper protocol's (bench/paper_protocol.py), end to end, "
                            "same model, draft, k, prompt and new tokens",
    "hf_early_exit_ratio": "our speculative tokens/s with Draft.early_exit(n) / transformers generate("
                           "assistant_early_exit=n) drafting k tokens per step (constant schedule, no confidence "
                           "stop, set on the model's generation_config where transformers reads them), end to end",
    "cost_growth": "ms per new token at several generation lengths; growth_vs_greedy = (spec ms per step at N / "
                   "at the shortest N) / (greedy ms per token at N / at the shortest N): 1 = no growth beyond "
                   "attention's own",
}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def drafts_for(anat: hs.Anatomy, kinds: list[str]) -> list[tuple[str, hs.Draft]]:
    out = []
    for kind in kinds:
        if kind == "attention_off":
            if anat.family != "transformer":
                out.append((kind, hs.Draft.attention_off()))
        elif kind == "layer_skip":
            out.append((kind, hs.Draft.layer_skip()))
        elif kind == "early_exit":
            out.append((kind, hs.Draft.early_exit(max(1, anat.n_layers // 2))))
        else:
            raise ValueError(f"unknown draft kind {kind!r}")
    return out


def main_draft(anat: hs.Anatomy) -> tuple[str, hs.Draft]:
    """The draft each model is known by (the paper's): attention_off for hybrids, layer_skip for the control."""
    return ("attention_off", hs.Draft.attention_off()) if anat.family != "transformer" else \
        ("layer_skip", hs.Draft.layer_skip())


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


NO_EOS: list[int] = []  # every run produces exactly the tokens asked for


def greedy(model, ids, n):
    return hs.greedy_generate(model, ids, max_new_tokens=n, eos_token_id=NO_EOS)


def spec(model, ids, draft, k, n):
    return hs.speculative_generate(model, ids, draft=draft, k=k, max_new_tokens=n, eos_token_id=NO_EOS)


def hf_config(model, n, **extra):
    config = copy.deepcopy(model.generation_config)
    config.update(max_new_tokens=n, min_new_tokens=n, do_sample=False, **extra)
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id if isinstance(config.eos_token_id, int) else 0
    return config


def hf_generate(model, ids, n, **extra):
    config = hf_config(model, n, **extra)
    with torch.inference_mode():
        out = model.generate(ids.unsqueeze(0), generation_config=config,
                             attention_mask=torch.ones_like(ids).unsqueeze(0))
    return out[0, ids.numel():]


def mean_drafted(counts) -> float:
    """Draft tokens per step, over the steps that drafted (the last step of a run may draft none)."""
    drafted = [c for c in counts if c > 0]
    return statistics.fmean(drafted) if drafted else float("nan")


@contextlib.contextmanager
def assistant_drafts(model, k: int | None):
    """transformers' assisted generation reads the draft length, its schedule and the confidence stop
    from the ASSISTANT's stored generation_config (with early exit: the model's own), not from the
    arguments of generate(): passed there, num_assistant_tokens=k is silently ignored and the default
    confidence threshold (0.4) stops most drafts after one token. So set them where they are read.
    k=None leaves transformers' defaults. Also counts the candidates drafted per step."""
    from transformers.generation import candidate_generator

    settings = {} if k is None else {"num_assistant_tokens": k, "num_assistant_tokens_schedule": "constant",
                                     "assistant_confidence_threshold": 0.0}
    saved = {name: getattr(model.generation_config, name) for name in settings}
    counts: list[int] = []
    original = candidate_generator.EarlyExitCandidateGenerator.get_candidates

    def counting(self, input_ids, **kwargs):
        candidates, logits = original(self, input_ids, **kwargs)
        counts.append(candidates.shape[-1] - input_ids.shape[-1])
        return candidates, logits

    for name, value in settings.items():
        setattr(model.generation_config, name, value)
    candidate_generator.EarlyExitCandidateGenerator.get_candidates = counting
    try:
        yield counts
    finally:
        candidate_generator.EarlyExitCandidateGenerator.get_candidates = original
        for name, value in saved.items():
            setattr(model.generation_config, name, value)


def git_state() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "hybridspec_core.py", "bench"],
                                    cwd=ROOT, capture_output=True, text=True).stdout.strip())
        return {"commit": commit, "core_or_bench_modified": dirty}
    except OSError:
        return {}


def machine() -> dict:
    info = {"node": platform.node(), "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


# ------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------

@torch.inference_mode()
def forward_costs(model, prompt: torch.Tensor, drafts: list[tuple[str, hs.Draft]], ks: list[int], reps: int) -> dict:
    """Median seconds of one cached forward after ``prompt``: full model with 1 and k+1 tokens (the
    chunk sizes decoding uses), each draft view with 1 token. Each call is undone before the next."""
    anat = hs.anatomy(model)
    length = prompt.numel()
    block = prompt[-(max(ks) + 1):].flip(0)  # any tokens will do

    def prefilled(plan=None):
        cache = hs.new_cache(model)
        with (hs.draft_view(model, plan) if plan is not None else _null()):
            hs._forward(model, prompt, cache, 0, last_only=True, mask_layer=plan.mask_layer if plan else None)
        states = hs._state_tensors(cache)
        return cache, states, [t.clone() for t in states]

    def undo(cache, states, saved):
        hs._crop_kv(cache, length)
        if states:
            torch._foreach_copy_(states, saved)

    full = prefilled()
    views = [(name, draft.plan(anat), *prefilled(draft.plan(anat))) for name, draft in drafts]
    times: dict = {"full_1": [], **{f"full_{k + 1}": [] for k in ks}, **{f"draft_{name}": [] for name, *_ in views}}
    with hs._DecodingPatches(model, full[0]):
        for _ in range(reps + 1):  # the first round warms up
            for key, tokens in [("full_1", 1)] + [(f"full_{k + 1}", k + 1) for k in ks]:
                started = time.perf_counter()
                hs._forward(model, block[:tokens], full[0], length, last_only=tokens == 1)
                times[key].append(time.perf_counter() - started)
                undo(*full)
            for name, plan, cache, states, saved in views:
                with hs.draft_view(model, plan):
                    started = time.perf_counter()
                    hs._forward(model, block[:1], cache, length, last_only=True, mask_layer=plan.mask_layer)
                    times[f"draft_{name}"].append(time.perf_counter() - started)
                undo(cache, states, saved)
    return {key: median(values[1:]) for key, values in times.items()}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def prompt_for(stream: torch.Tensor, context: int, repeat: int) -> torch.Tensor:
    """Repeat r reads the held-out text from a different offset (wrapping around)."""
    offset = (repeat * 1009) % max(1, stream.numel() - context)
    return stream[offset: offset + context].clone()


# ------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------

def run(args) -> dict:
    torch.manual_seed(args.seed)
    from tqdm.auto import tqdm

    available = []
    for name in args.models:
        if Path(name).is_dir() or name in hs.shipped_miniatures():
            available.append(name)
        else:
            print(f"[bench] skip {name}: not shipped (miniatures/{name}/ is missing; `make miniatures` builds it)",
                  flush=True)
    result = {"meta": {}, "rows": [], "peers": {"hf_generate_ratio": [], "paper_protocol_ratio": [],
                                                "hf_early_exit_ratio": [], "cost_growth": []},
              "cost_points": [], "break_even": [], "predicted": [], "definitions": DEFINITIONS}
    if not available:
        print("[bench] no model to benchmark", flush=True)

    for model_name in available:
        model, tokenizer = hs.load(model_name)
        label = Path(model_name).name
        anat = hs.anatomy(model)
        stream = torch.cat(hs.evaluation_sequences(tokenizer))
        limit = anat.max_positions or 10 ** 9
        contexts = [c for c in args.contexts if c + max(args.new_tokens, args.paper_new_tokens) <= limit]
        for c in args.contexts:
            if c not in contexts:
                print(f"[bench] {label}: context {c} + new tokens exceeds its {limit} positions: skipped", flush=True)
        drafts = drafts_for(anat, args.drafts)
        main_name, main = main_draft(anat)
        ks = args.ks
        print(f"[bench] {label}: {anat.model_class}, {anat.family}, {anat.n_layers} layers; drafts "
              f"{', '.join(d.name for _, d in drafts)}; contexts {contexts}; k {ks}", flush=True)

        # warm up (first calls allocate, import kernels, fill the allocator)
        warm = prompt_for(stream, min(contexts or [16]), 0)
        greedy(model, warm, 4)
        spec(model, warm, main, 2, 4)

        # The grid, plus the longest context the model allows for its main draft: where attention
        # weighs most, does speculation beat greedy decoding?
        cells = [(context, drafts, ks) for context in contexts]
        longest = min(limit - args.new_tokens - 8, stream.numel() - 1) // 64 * 64
        if args.long_ks and longest > max(contexts or [0]):
            cells.append((longest, [(main_name, main)], args.long_ks))
        jobs = sum(args.repeats * (1 + len(d) * len(kk)) for _, d, kk in cells)
        bar = tqdm(total=jobs, desc=f"{label} grid", leave=False, disable=args.no_progress)
        for context, drafts_here, ks_here in cells:
            greedy_runs, spec_runs = [], {(name, k): [] for name, _ in drafts_here for k in ks_here}
            for repeat in range(args.repeats):
                ids = prompt_for(stream, context, repeat)
                _, t_first = timed(lambda: greedy(model, ids, 1))
                reference, t_all = timed(lambda: greedy(model, ids, args.new_tokens))
                greedy_runs.append({"t_first": t_first, "t_all": t_all, "tokens": reference})
                bar.update()
                for name, draft in drafts_here:
                    for k in ks_here:
                        out = spec(model, ids, draft, k, args.new_tokens)
                        spec_runs[(name, k)].append({"stats": out.stats,
                                                     "lossless": torch.equal(out.tokens, reference)})
                        bar.update()
            costs = forward_costs(model, prompt_for(stream, context, 0), drafts_here, ks_here, args.micro_repeats)
            for view, seconds in costs.items():
                result["cost_points"].append({"model": label, "family": anat.family, "view": view, "context": context,
                                              "ms": seconds * 1e3, "kind": "measured"})
            t_prefill = median([g["t_first"] for g in greedy_runs])
            greedy_tps = median([(args.new_tokens - 1) / max(g["t_all"] - t_prefill, 1e-9) for g in greedy_runs])
            greedy_e2e = median([args.new_tokens / g["t_all"] for g in greedy_runs])
            for name, draft in drafts_here:
                c = costs[f"draft_{name}"] / costs["full_1"]
                for k in ks_here:
                    runs = spec_runs[(name, k)]
                    stats = [r["stats"] for r in runs]
                    pooled = hs.SpecStats(k=k)
                    for s in stats:
                        pooled.accepted += s.accepted
                        pooled.drafted += s.drafted
                        pooled.new_tokens += s.new_tokens - 1
                        pooled.verify_forwards += s.verify_forwards
                    tau = pooled.new_tokens / pooled.verify_forwards if pooled.verify_forwards else float("nan")
                    spec_tps = median([(s.new_tokens - 1) / max(s.time_total - s.time_prefill, 1e-9) for s in stats])
                    spec_e2e = median([s.new_tokens / s.time_total for s in stats])
                    step_time = sum(s.time_draft + s.time_verify + s.time_rollback for s in stats)
                    v = costs[f"full_{k + 1}"] / costs["full_1"]
                    predicted = tau / (k * c + v)
                    speedup = spec_tps / greedy_tps
                    result["rows"].append({
                        "model": label, "family": anat.family, "draft": name, "draft_spec": draft.name, "k": k,
                        "context": context, "kind": "measured", "new_tokens": args.new_tokens, "repeats": len(runs),
                        "greedy_tps": greedy_tps, "spec_tps": spec_tps, "speedup": speedup,
                        "greedy_e2e_tps": greedy_e2e, "spec_e2e_tps": spec_e2e, "e2e_speedup": spec_e2e / greedy_e2e,
                        "alpha": pooled.alpha, "per_token_acceptance": pooled.per_token_acceptance, "tau": tau,
                        "c": c, "v": v, "predicted_speedup": predicted, "prediction_error": speedup / predicted - 1,
                        "rollback_fraction": sum(s.time_rollback for s in stats) / step_time if step_time else None,
                        "draft_fraction": sum(s.time_draft for s in stats) / step_time if step_time else None,
                        "verify_fraction": sum(s.time_verify for s in stats) / step_time if step_time else None,
                        "rollback_method": stats[0].rollback_method if stats else "",
                        "rollback_forwards": sum(s.rollback_forwards for s in stats),
                        "steps": sum(s.steps for s in stats),
                        "full_forward_ms": costs["full_1"] * 1e3, "draft_forward_ms": costs[f"draft_{name}"] * 1e3,
                        "verify_forward_ms": costs[f"full_{k + 1}"] * 1e3,
                        "lossless": all(r["lossless"] for r in runs),
                    })
        bar.close()

        # c and v of every draft at the longest context the model allows, for the fit below (times only)
        longest = min(limit - 8, stream.numel() - 1) // 64 * 64 if args.fit_longest else None
        if longest and longest > max(c for c, _, _ in cells):
            costs = forward_costs(model, prompt_for(stream, longest, 0), drafts, ks, max(3, args.micro_repeats // 2))
            for view, seconds in costs.items():
                result["cost_points"].append({"model": label, "family": anat.family, "view": view, "context": longest,
                                              "ms": seconds * 1e3, "kind": "measured"})
        result["break_even"] += measured_break_even(result, label, drafts, ks)

        if not args.no_peers:
            peers(args, result, model, label, anat, stream, contexts, main_name, main)
        del model

    result["predicted"] = cost_model.predicted_rows()
    result["break_even"] += cost_model.break_even_contexts()
    result["summary"] = summarize(result)
    return result


def measured_break_even(result: dict, label: str, drafts, ks) -> list[dict]:
    """Fit every per-token time of one model linearly in the context (attention's cost grows
    linearly; everything else is constant), then solve tau / (k c(T) + v(T)) = 1 for T."""
    import numpy as np
    points = [p for p in result["cost_points"] if p["model"] == label]
    rows = [r for r in result["rows"] if r["model"] == label]

    def fit(view):
        xs = [p["context"] for p in points if p["view"] == view]
        ys = [p["ms"] for p in points if p["view"] == view]
        if len(set(xs)) < 2:
            return None
        slope, intercept = np.polyfit(xs, ys, 1)
        return float(intercept), float(slope)

    out = []
    full = fit("full_1")
    for name, _ in drafts:
        d = fit(f"draft_{name}")
        for k in ks:
            ver = fit(f"full_{k + 1}")
            taus = [r["tau"] for r in rows if r["draft"] == name and r["k"] == k]
            measured = sorted(r["context"] for r in rows if r["draft"] == name and r["k"] == k and r["speedup"] >= 1)
            entry = {"model": label, "draft": name, "k": k, "kind": "measured-fit", "tau": median(taus),
                     "measured_contexts_that_pay": measured, "break_even_context": None, "note": ""}
            if full and d and ver and taus:
                tau = median(taus)
                # pays when tau * t_full(T) - k * t_draft(T) - t_verify(T) > 0
                f0 = tau * full[0] - k * d[0] - ver[0]
                f1 = tau * full[1] - k * d[1] - ver[1]
                if f0 >= 0:
                    entry["break_even_context"] = 0
                    entry["note"] = "pays at every context (fit)"
                elif f1 > 0:
                    entry["break_even_context"] = int(-f0 / f1)
                    entry["note"] = "extrapolated" if -f0 / f1 > max(p["context"] for p in points) else "interpolated"
                else:
                    entry["note"] = "never (the draft's per-token time grows as fast as the full model's)"
                entry.update(fit_full_ms=full, fit_draft_ms=d, fit_verify_ms=ver)
            out.append(entry)
    return out


def peers(args, result, model, label, anat, stream, contexts, main_name, main) -> None:
    from tqdm.auto import tqdm
    P = result["peers"]
    paper_ks = [k for k in args.paper_ks if k in args.ks] or args.paper_ks
    total = len(contexts) * (1 + len(paper_ks) + (len(args.hf_ks) if anat.family == "transformer" else 0)) + 1
    bar = tqdm(total=total, desc=f"{label} peers", leave=False, disable=args.no_progress)
    for context in contexts:
        ids = prompt_for(stream, context, 0)
        # (a) our greedy baseline vs transformers' generate(do_sample=False)
        ours_t, theirs_t, same = [], [], True
        for _ in range(args.peer_repeats):
            ours, t_ours = timed(lambda: greedy(model, ids, args.new_tokens))
            theirs, t_theirs = timed(lambda: hf_generate(model, ids, args.new_tokens))
            ours_t.append(t_ours)
            theirs_t.append(t_theirs)
            same = same and torch.equal(ours, theirs)
        P["hf_generate_ratio"].append({
            "model": label, "k": None, "draft": None, "context": context, "new_tokens": args.new_tokens,
            "ratio": median(theirs_t) / median(ours_t), "ours_tps": args.new_tokens / median(ours_t),
            "theirs_tps": args.new_tokens / median(theirs_t), "same_tokens": same})
        bar.update()
        # (b) the paper's protocol (no cache in verification) vs ours, same draft, k and prompt
        n = args.paper_new_tokens
        reference = greedy(model, ids, n)
        for k in paper_ks:
            ours_t, theirs_t, same, ours_ok = [], [], True, True
            for _ in range(max(1, args.peer_repeats - 2)):  # the slow one: fewer repeats
                out, t_ours = timed(lambda: spec(model, ids, main, k, n))
                paper = paper_protocol.paper_protocol_generate(model, ids, main, k, n)
                ours_t.append(t_ours)
                theirs_t.append(paper["seconds"])
                same = same and torch.equal(paper["tokens"], reference)
                ours_ok = ours_ok and torch.equal(out.tokens, reference)
            P["paper_protocol_ratio"].append({
                "model": label, "draft": main_name, "k": k, "context": context, "new_tokens": n,
                "ratio": median(theirs_t) / median(ours_t), "ours_tps": n / median(ours_t),
                "theirs_tps": n / median(theirs_t), "ours_lossless": ours_ok, "paper_protocol_lossless": same})
            bar.update()
        # (c) transformers' own self-speculation (early exit) on the transformer control
        if anat.family == "transformer":
            layers = max(1, anat.n_layers // 2)
            draft = hs.Draft.early_exit(layers)
            reference = greedy(model, ids, args.new_tokens)
            with assistant_drafts(model, None) as default_counts:  # what generate(assistant_early_exit=n) does as is
                _, t_default = timed(lambda: hf_generate(model, ids, args.new_tokens, assistant_early_exit=layers))
            for k in args.hf_ks:
                ours_t, theirs_t, same = [], [], True
                for _ in range(args.peer_repeats):
                    out, t_ours = timed(lambda: spec(model, ids, draft, k, args.new_tokens))
                    with assistant_drafts(model, k) as counts:
                        theirs, t_theirs = timed(lambda: hf_generate(model, ids, args.new_tokens,
                                                                     assistant_early_exit=layers))
                    ours_t.append(t_ours)
                    theirs_t.append(t_theirs)
                    same = same and torch.equal(out.tokens, theirs) and torch.equal(out.tokens, reference)
                P["hf_early_exit_ratio"].append({
                    "model": label, "draft": draft.name, "early_exit_layers": layers, "k": k, "context": context,
                    "new_tokens": args.new_tokens, "ratio": median(theirs_t) / median(ours_t),
                    "ours_tps": args.new_tokens / median(ours_t), "theirs_tps": args.new_tokens / median(theirs_t),
                    "same_tokens": same,
                    # drafts per step on their side: k, except where the requested length runs out
                    "theirs_mean_drafted": mean_drafted(counts),
                    "ours_mean_drafted": mean_drafted(out.stats.drafted),
                    # their defaults (20 tokens, confidence stop at 0.4, one run): for reference, not the ratio
                    "theirs_default_tps": args.new_tokens / t_default,
                    "theirs_default_mean_drafted": mean_drafted(default_counts)})
                bar.update()
    # (d) cost growth: time per new token at several generation lengths, from a short prompt
    ids = prompt_for(stream, min(contexts or [128]), 0)
    k = args.growth_k
    base = None
    for n in args.growth:
        if ids.numel() + n > (anat.max_positions or 10 ** 9):
            continue
        _, t_first = timed(lambda: greedy(model, ids, 1))
        _, t_all = timed(lambda: greedy(model, ids, n))
        out = spec(model, ids, main, k, n)
        s = out.stats
        decode = s.time_total - s.time_prefill
        row = {"model": label, "draft": main_name, "k": k, "context": ids.numel(), "new_tokens": n,
               "greedy_ms_per_token": (t_all - t_first) / (n - 1) * 1e3,
               "spec_ms_per_token": decode / (s.new_tokens - 1) * 1e3,
               "spec_ms_per_step": decode / max(s.steps, 1) * 1e3, "tau": s.tau,
               "rollback_fraction": s.time_rollback / max(s.time_draft + s.time_verify + s.time_rollback, 1e-12)}
        if base is None:
            base = row
        row["growth_vs_greedy"] = (row["spec_ms_per_step"] / base["spec_ms_per_step"]) / \
            (row["greedy_ms_per_token"] / base["greedy_ms_per_token"])
        P["cost_growth"].append(row)
    bar.update()
    bar.close()


def summarize(result: dict) -> dict:
    out = {}
    for name in ("hf_generate_ratio", "paper_protocol_ratio", "hf_early_exit_ratio"):
        ratios = [p["ratio"] for p in result["peers"][name]]
        out[name] = {"min": min(ratios) if ratios else None, "median": median(ratios), "n": len(ratios)}
    rows = result["rows"]
    fractions = [r["rollback_fraction"] for r in rows if r["rollback_fraction"] is not None]
    out["rollback_fraction"] = {"median": median(fractions), "max": max(fractions) if fractions else None}
    out["all_lossless"] = all(r["lossless"] for r in rows)
    out["rows_that_pay"] = [{k: r[k] for k in ("model", "draft", "k", "context", "speedup")}
                            for r in rows if r["speedup"] >= 1]
    growth = [p["growth_vs_greedy"] for p in result["peers"]["cost_growth"]]
    out["cost_growth_vs_greedy_max"] = max(growth) if growth else None
    return out


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------

def merge(old: dict, new: dict) -> dict:
    """``new`` on top of ``old``: the models ``new`` measured replace their old entries; the other
    models' entries stay. ``meta.runs`` lists every run the file now holds."""
    models = {r["model"] for r in new["rows"]} | {p["model"] for p in new["cost_points"]}
    out = dict(new)
    for key in ("rows", "cost_points"):
        out[key] = [r for r in old.get(key, []) if r["model"] not in models] + new[key]
    out["break_even"] = [b for b in old.get("break_even", [])
                         if b["kind"] != "predicted" and b["model"] not in models] + new["break_even"]
    out["peers"] = {name: [p for p in old.get("peers", {}).get(name, []) if p["model"] not in models] + rows
                    for name, rows in new["peers"].items()}
    out["meta"] = dict(new["meta"])
    out["meta"]["runs"] = old.get("meta", {}).get("runs", [old.get("meta", {})]) + [new["meta"]]
    out["summary"] = summarize(out)
    return out


def _fmt(value, spec=".2f"):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def print_table(result: dict) -> None:
    columns = [("model", "model", None), ("draft", "draft", None), ("k", "k", None), ("ctx", "context", None),
               ("greedy t/s", "greedy_tps", ".1f"), ("spec t/s", "spec_tps", ".1f"), ("S", "speedup", ".2f"),
               ("alpha", "alpha", ".2f"), ("tau", "tau", ".2f"), ("c", "c", ".2f"), ("v", "v", ".2f"),
               ("S pred", "predicted_speedup", ".2f"), ("err", "prediction_error", "+.0%"),
               ("rollback", "rollback_fraction", ".1%"), ("lossless", "lossless", None)]
    table = [[h for h, _, _ in columns]] + [[_fmt(r[key], f or ".2f") for _, key, f in columns] for r in result["rows"]]
    _print_rows(table, "measured (decode only, medians)")
    for name in ("hf_generate_ratio", "paper_protocol_ratio", "hf_early_exit_ratio"):
        rows = result["peers"][name]
        if rows:
            head = ["model", "draft", "k", "ctx", "new", "ours t/s", "theirs t/s", "ratio", "same tokens"]
            body = [[_fmt(p.get("model")), _fmt(p.get("draft")), _fmt(p.get("k")), _fmt(p.get("context")),
                     _fmt(p.get("new_tokens")), _fmt(p["ours_tps"], ".1f"), _fmt(p["theirs_tps"], ".1f"),
                     _fmt(p["ratio"], ".2f"),
                     _fmt(p.get("same_tokens", p.get("paper_protocol_lossless")))] for p in rows]
            _print_rows([head] + body, f"{name} (ours / theirs, end to end)")
    growth = result["peers"]["cost_growth"]
    if growth:
        head = ["model", "draft", "k", "new", "greedy ms/tok", "spec ms/tok", "spec ms/step", "tau", "growth vs greedy"]
        body = [[p["model"], p["draft"], _fmt(p["k"]), _fmt(p["new_tokens"]), _fmt(p["greedy_ms_per_token"]),
                 _fmt(p["spec_ms_per_token"]), _fmt(p["spec_ms_per_step"]), _fmt(p["tau"]),
                 _fmt(p["growth_vs_greedy"])] for p in growth]
        _print_rows([head] + body, "cost_growth")
    be = [b for b in result["break_even"] if b["kind"] == "measured-fit" or b["k"] in (1, 2, 4, 8)]
    if be:
        head = ["kind", "model", "draft", "k", "break-even context", "note"]
        body = [[b["kind"], b["model"], b["draft"], _fmt(b["k"]), _fmt(b["break_even_context"]),
                 b.get("note") or b.get("alpha_source", "")] for b in be]
        _print_rows([head] + body, "break-even context (predicted = cost model of the real checkpoints)")
    print(json.dumps(result["summary"], indent=1, default=str))


def _print_rows(table, title):
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    print(f"\n== {title}")
    for i, row in enumerate(table):
        print("  ".join(str(cell).rjust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a reduced grid (a few minutes)")
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                    help="shipped miniature names or model folders; missing ones are skipped")
    ap.add_argument("--drafts", default=None, help="draft kinds: attention_off,layer_skip,early_exit")
    ap.add_argument("--ks", type=_ints, default=None, help="draft lengths (default 1,2,3,4,6,8)")
    ap.add_argument("--contexts", type=_ints, default=None, help="prompt lengths in tokens (default 128,512,2048)")
    ap.add_argument("--new-tokens", type=int, default=None, help="new tokens per run (default 64)")
    ap.add_argument("--repeats", type=int, default=None, help="prompts per cell; medians (default 3)")
    ap.add_argument("--peer-repeats", type=int, default=None,
                    help="repeats of each side-by-side comparison; medians (default 5; the paper protocol 2 fewer)")
    ap.add_argument("--micro-repeats", type=int, default=None,
                    help="repeats of each timed forward for c, v (default 15)")
    ap.add_argument("--paper-ks", type=_ints, default=None, help="k for the paper-protocol peer (default 2,4,8)")
    ap.add_argument("--paper-new-tokens", type=int, default=None,
                    help="new tokens for the paper-protocol peer (default 32)")
    ap.add_argument("--hf-ks", type=_ints, default=None, help="k for the early-exit peer (default 2,4)")
    ap.add_argument("--growth", type=_ints, default=None,
                    help="generation lengths for cost growth (default 64,256,1024)")
    ap.add_argument("--growth-k", type=int, default=2, help="k for cost growth (default 2)")
    ap.add_argument("--long-ks", type=_ints, default=None,
                    help="k for the main draft at the longest context the model allows (default 1,2,4; '' for none)")
    ap.add_argument("--no-peers", action="store_true", help="skip the side-by-side peers")
    ap.add_argument("--no-fit-longest", dest="fit_longest", action="store_false",
                    help="do not time forwards at the longest context the model allows")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON (default bench/results/latest.json)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--merge", action="store_true",
                    help="merge into an existing --out: the models measured now replace their old entries")
    args = ap.parse_args(argv)
    full = dict(drafts="attention_off,layer_skip,early_exit", ks=[1, 2, 3, 4, 6, 8], contexts=[128, 512, 2048],
                new_tokens=64, repeats=3, peer_repeats=5, micro_repeats=15, paper_ks=[2, 4, 8], paper_new_tokens=32,
                hf_ks=[2, 4], growth=[64, 256, 1024], long_ks=[1, 2, 4])
    quick = dict(drafts="attention_off,layer_skip,early_exit", ks=[1, 2, 4], contexts=[128, 2048], new_tokens=32,
                 repeats=1, peer_repeats=3, micro_repeats=5, paper_ks=[2], paper_new_tokens=16, hf_ks=[2],
                 growth=[32, 128], long_ks=[])
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.drafts = [d.strip() for d in args.drafts.split(",") if d.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = _dt.datetime.now(_dt.timezone.utc)
    result = run(args)
    finished = _dt.datetime.now(_dt.timezone.utc)
    command = "python bench/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["meta"] = {
        "command": command.strip(), "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"), "minutes": (finished - started).total_seconds() / 60,
        "machine": machine(), "git": git_state(), "seed": args.seed, "threads": args.threads,
        "grid": {key: getattr(args, key) for key in ("models", "drafts", "ks", "contexts", "new_tokens", "repeats",
                                                      "peer_repeats",
                                                      "micro_repeats", "paper_ks", "paper_new_tokens", "hf_ks",
                                                      "growth", "growth_k", "long_ks", "quick")},
        "cost_model_device": cost_model.DEVICE,
    }
    if args.merge and args.out.is_file():
        result = merge(json.loads(args.out.read_text()), result)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\n[bench] wrote {args.out} ({len(result['rows'])} rows, {result['meta']['minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
