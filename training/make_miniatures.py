"""Regenerate the miniature zoo: corpus -> tokenizer -> every model (or one, by name).

    python -m training.make_miniatures [--only NAME ...] [--max-minutes M] [--threads N]
                                       [--tokens T] [--restart] [--no-export-partial]

Resumable: rerun the same command after an interruption and each model continues from its last
checkpoint in training/work/NAME/ckpt (a finished model is skipped unless --tokens asks for more).
The training log grows in miniatures/NAME/training_log.csv; finished weights, config, tokenizer,
evaluation.json and a model card land in miniatures/NAME/.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from training import corpus
from training.configs import REAL_CONFIGS, SCHEDULES, TRAINING_ORDER, ZOO, Miniature, Schedule, count_parameters
from training.tokenizer import build_tokenizer

REPO_ROOT = corpus.REPO_ROOT
MINIATURES_DIR = REPO_ROOT / "miniatures"
WORK_DIR = corpus.WORK_DIR
EVAL_PROMPT_TOKENS = 128  # training-log prompts: short, so that a log row costs seconds
PAPER_PROMPT_TOKENS = 512  # final evaluation: the paper's truncation


# ------------------------------------------------------------------------------------------------
# Data


def tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:12]


def token_stream(split_path: Path, tokenizer, cache_dir: Path) -> np.ndarray:
    """Every document of a split, each followed by <|endoftext|>, as one uint16 array (cached)."""
    cache = Path(cache_dir) / f"{split_path.stem}-{tokenizer_fingerprint(tokenizer)}.npy"
    if cache.exists():
        return np.load(cache)
    ids: list[int] = []
    for doc in corpus.read_split(split_path):
        ids.extend(tokenizer(doc.text)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    stream = np.asarray(ids, dtype=np.uint16)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, stream)
    return stream


def prompt_token_lists(docs, tokenizer, max_tokens: int, count: int) -> list[list[int]]:
    prompts = corpus.build_prompts(docs, count=count)
    return [tokenizer(p["text"])["input_ids"][:max_tokens] for p in prompts]


def shipped_prompts(tokenizer, max_tokens: int = PAPER_PROMPT_TOKENS) -> list[torch.Tensor]:
    with open(corpus.SHIPPED_DATA_DIR / "prompts.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return [torch.tensor(tokenizer(t)["input_ids"][:max_tokens], dtype=torch.long) for t in texts]


def unigram_perplexity(train_stream: np.ndarray, test_sequences: list[torch.Tensor], vocab: int) -> float:
    """Add-one-smoothed unigram model fitted on train, scored on the test tokens (that the LM
    predicts: every token but each sequence's first)."""
    counts = np.bincount(train_stream.astype(np.int64), minlength=vocab).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    targets = np.concatenate([s[1:].numpy() for s in test_sequences])
    return float(math.exp(-log_probs[targets].mean()))


# ------------------------------------------------------------------------------------------------
# Export and model card


def final_evaluation(folder: Path, miniature: Miniature, train_stream: np.ndarray,
                     n_prompts: int) -> dict:
    """Reload the exported (bfloat16) weights through hs.load and measure on the TEST split."""
    import hybridspec_core as hs
    from training.metrics import draft_for

    model, tokenizer = hs.load(folder)
    test_docs = corpus.read_split(corpus.SHIPPED_DATA_DIR / "test_split.txt")
    test_sequences = [torch.tensor(tokenizer(d.text)["input_ids"], dtype=torch.long) for d in test_docs]
    draft = draft_for(miniature.draft)
    ppl = hs.perplexity(model, test_sequences, max_length=512)
    draft_ppl = hs.perplexity(model, test_sequences, draft=draft, max_length=512)
    prompts = shipped_prompts(tokenizer)[:n_prompts]
    result = {
        "test_tokens": int(sum(s.numel() for s in test_sequences)),
        "test_perplexity": ppl,
        "unigram_test_perplexity": unigram_perplexity(train_stream, test_sequences, len(tokenizer)),
        "draft": draft.name,
        "draft_test_perplexity": draft_ppl,
        "draft_perplexity_ratio": draft_ppl / ppl,
        "family": hs.anatomy(model).family,
    }
    for k in (2, 4):
        protocol = hs.paper_protocol(model, prompts, draft, k, temperature=0.0, seed=0)
        result[f"alpha_k{k}"] = protocol["alpha"]
        result[f"alpha_k{k}_ci"] = [protocol["ci_low"], protocol["ci_high"]]
        result["alpha_prompts"] = protocol["n_prompts"]
    return result


def export(model, tokenizer, miniature: Miniature, folder: Path) -> None:
    """bfloat16 safetensors + config + tokenizer: loads with AutoModelForCausalLM / AutoTokenizer."""
    import copy
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.safetensors"):
        stale.unlink()
    exported = copy.deepcopy(model).to(torch.bfloat16).eval()
    exported.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def layer_layout(config) -> str:
    types = list(getattr(config, "layer_types", None) or [])
    if not types:
        return f"{config.num_hidden_layers} x attention + MLP"
    if set(types) == {"hybrid"}:
        return f"{len(types)} x [Mamba-2 || attention] + MLP (parallel in every layer)"
    symbols = "".join("A" if t == "full_attention" else "L" for t in types)
    attention = [i for i, t in enumerate(types) if t == "full_attention"]
    return f"{symbols} (L = Gated DeltaNet, A = gated full attention at layers {attention})"


def model_card(miniature: Miniature, model, schedule: Schedule, state, evaluation: dict,
               command: str, package_version: str, threads: int) -> str:
    config = model.config
    real_id, _ = REAL_CONFIGS[miniature.family]
    status = ("finished" if state.finished else
              f"PARTIAL: {state.tokens:,} of {schedule.tokens:,} planned tokens (rerun the command to continue)")
    family_text = {
        "falcon-h1": "parallel hybrid (Mamba-2 and attention side by side in every layer)",
        "qwen3.5": "sequential hybrid (Gated DeltaNet layers interleaved with gated full-attention layers)",
        "qwen2.5": "transformer control",
    }[miniature.family]
    lines = [
        f"# {miniature.name}",
        "",
        f"A miniature {family_text}, trained here from scratch on the Python documentation. "
        f"Same transformers class and layout as `{real_id}`, scaled down (training/configs.py gives "
        f"the real config's ratios and how they were scaled). Not a distillation: the real weights "
        f"were never available here.",
        "",
        "| | |",
        "|---|---|",
        f"| status | {status} |",
        f"| class | `{type(model).__name__}` / `{type(config).__name__}` (model_type `{config.model_type}`) |",
        f"| parameters | {count_parameters(model):,} |",
        f"| hidden size | {config.hidden_size} |",
        f"| layers | {config.num_hidden_layers}: {layer_layout(config)} |",
        f"| vocabulary | {config.vocab_size} (byte-level BPE trained on the train split) |",
        f"| context | max_position_embeddings {config.max_position_embeddings}; trained on {schedule.seq_len}-token windows |",
        f"| tokens seen | {state.tokens:,} ({state.step:,} steps x {schedule.batch_size} x {schedule.seq_len}) |",
        f"| schedule | AdamW lr {schedule.lr:g}, warmup {schedule.warmup_tokens:,} tokens, "
        f"constant, linear decay to 10% over the last {schedule.decay_fraction:.0%} of {schedule.tokens:,} "
        f"planned tokens; weight decay {schedule.weight_decay}; seed {schedule.seed} |",
        f"| training time | {state.elapsed_s / 60:.1f} min on {threads} CPU thread(s), evaluation included |",
        f"| weights | bfloat16 safetensors |",
        f"| test perplexity | {evaluation['test_perplexity']:.2f} on {evaluation['test_tokens']:,} test-split tokens "
        f"(unigram baseline {evaluation['unigram_test_perplexity']:.1f}) |",
        f"| draft | `{evaluation['draft']}` |",
        f"| draft / full perplexity ratio | {evaluation['draft_perplexity_ratio']:.2f} "
        f"({evaluation['draft_test_perplexity']:.2f} / {evaluation['test_perplexity']:.2f}) |",
        f"| alpha, k = 2 (T = 0, one round, {evaluation['alpha_prompts']} prompts) | "
        f"{evaluation['alpha_k2']:.3f} [{evaluation['alpha_k2_ci'][0]:.3f}, {evaluation['alpha_k2_ci'][1]:.3f}] |",
        f"| alpha, k = 4 | {evaluation['alpha_k4']:.3f} "
        f"[{evaluation['alpha_k4_ci'][0]:.3f}, {evaluation['alpha_k4_ci'][1]:.3f}] |",
        f"| training text | {package_version} (miniatures/data/LICENSE-PSF.txt) |",
        "",
        f"Reproduce it with `make miniatures MODEL={miniature.name}` (= `python -m training.make_miniatures "
        f"--only {miniature.name}`; seeded, resumable). The run that finished these weights was:",
        "",
        "```",
        command,
        "```",
        "",
        "A run extended with a larger `--tokens` rewinds to the checkpoint where its decay began and "
        "continues the constant phase: the learning rate is constant until then and batches are seeded by "
        "step, so it is the same run as one planned for the larger total from the start. The training "
        "time is that of the run these weights come from (a rewound decay's time is not counted).",
        "",
        "`training_log.csv` records, every few hundred steps, train and validation loss, the draft's "
        "perplexity ratio, greedy alpha at k = 2 and 4 on 16 validation prompts (128 tokens), and the "
        "copy probe (loss on the second occurrence of a random 32-token span, 192 tokens after the "
        "first; ln(4094) = 8.32 nats is chance) with the full model and with the draft. "
        "`evaluation.json` holds the numbers above.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(ZOO), help="train only these (default: all)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-time budget per model in this run (default: none); the model "
                             "checkpoints and the next run continues")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="planned tokens per model, overriding the size class default; larger "
                             "than a finished run's extends it")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between training-log rows")
    parser.add_argument("--final-prompts", type=int, default=200,
                        help="prompts for the model card's alpha (the paper used 200)")
    parser.add_argument("--restart", action="store_true", help="discard checkpoints and logs first")
    parser.add_argument("--no-export-partial", dest="export_partial", action="store_false",
                        help="export only finished models (default: export where the budget ended "
                             "too, marked PARTIAL in the card)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--cards-only", metavar="COMMAND",
                        help="train nothing: rewrite the model cards of exported models from their "
                             "evaluation.json and checkpoint, naming COMMAND as the run that made them")
    return parser.parse_args(argv)


def rewrite_cards(names, command: str, package_version: str) -> None:
    """The card of an exported model, again (after the card's template changed), from what the run saved."""
    from transformers import AutoModelForCausalLM

    from training.train import TrainState

    for name in names:
        folder = MINIATURES_DIR / name
        evaluation = json.loads((folder / "evaluation.json").read_text())
        meta = json.loads((WORK_DIR / name / "ckpt" / "state.json").read_text())
        state = TrainState(**meta["train_state"])
        if state.tokens != evaluation["tokens"]:
            raise RuntimeError(f"{name}: the checkpoint ({state.tokens:,} tokens) is not what was exported "
                               f"({evaluation['tokens']:,}); retrain instead")
        model = AutoModelForCausalLM.from_pretrained(folder)
        threads = evaluation.get("threads", 1)
        (folder / "README.md").write_text(model_card(
            ZOO[name], model, Schedule(**evaluation["schedule"]), state, evaluation, command, package_version,
            threads))
        print(f"{name}: card rewritten", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(1)  # no extra thread pool beside the N asked for
        except RuntimeError:  # already set by an earlier parallel call in this process
            pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = "python -m training.make_miniatures " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    from training.metrics import build_eval_set, measure
    from training.train import train

    summary_path = WORK_DIR / "corpus" / "summary.json"
    if summary_path.exists() and (corpus.SHIPPED_DATA_DIR / "test_split.txt").exists():
        summary = json.loads(summary_path.read_text())
    else:
        print("building the corpus", flush=True)
        summary = corpus.build_corpus()
    package_version = summary["package_version"]
    tokenizer = build_tokenizer()
    train_stream = token_stream(WORK_DIR / "corpus" / "train.txt", tokenizer, WORK_DIR / "tokens")
    validation_stream = token_stream(WORK_DIR / "corpus" / "validation.txt", tokenizer, WORK_DIR / "tokens")
    validation_docs = corpus.read_split(WORK_DIR / "corpus" / "validation.txt")
    print(f"corpus: {package_version}; train {len(train_stream):,} tokens, validation "
          f"{len(validation_stream):,} tokens", flush=True)

    names = [n for n in TRAINING_ORDER if not args.only or n in args.only]
    if args.cards_only:
        rewrite_cards(names, args.cards_only, package_version)
        return 0
    for name in names:
        miniature = ZOO[name]
        schedule = SCHEDULES[miniature.size_class]
        if args.tokens:
            schedule = replace(schedule, tokens=args.tokens)
        eval_set = build_eval_set(
            validation_stream, prompt_token_lists(validation_docs, tokenizer, EVAL_PROMPT_TOKENS, 400),
            seq_len=schedule.seq_len, vocab_size=len(tokenizer))
        folder = MINIATURES_DIR / name
        started = time.time()
        result = train(
            miniature, schedule, train_stream, WORK_DIR / name,
            log_path=folder / "training_log.csv",
            measure=lambda model: measure(model, eval_set, miniature.draft, schedule.seq_len),
            eval_every=args.eval_every, max_minutes=args.max_minutes, restart=args.restart,
            progress=args.progress,
        )
        state = result.state
        print(f"{name}: {state.tokens:,} tokens, step {state.step}, {'finished' if state.finished else 'paused'} "
              f"after {(time.time() - started) / 60:.1f} min this run", flush=True)
        already_exported = (folder / "evaluation.json").exists() and json.loads(
            (folder / "evaluation.json").read_text()).get("tokens") == state.tokens
        if (state.finished or args.export_partial) and not already_exported:
            export(result.model, tokenizer, miniature, folder)
            evaluation = final_evaluation(folder, miniature, train_stream, args.final_prompts)
            evaluation.update(tokens=state.tokens, steps=state.step, finished=state.finished,
                              training_minutes=state.elapsed_s / 60, threads=torch.get_num_threads(),
                              parameters=count_parameters(result.model), schedule=asdict(schedule))
            (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=1) + "\n")
            (folder / "README.md").write_text(model_card(
                miniature, result.model, schedule, state, evaluation, command, package_version,
                torch.get_num_threads()))
            print(f"{name}: exported to {folder}: test ppl {evaluation['test_perplexity']:.2f}, "
                  f"draft ratio {evaluation['draft_perplexity_ratio']:.2f}, alpha k=2 "
                  f"{evaluation['alpha_k2']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
