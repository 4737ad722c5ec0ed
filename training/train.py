"""Train one miniature: seeded, resumable, observable.

- Batches are random windows of the train token stream, drawn from a generator seeded by
  (seed, step): a resumed run sees exactly the batches an uninterrupted one would have seen, and
  there is no data-loader state to save.
- Learning rate: warmup, then constant, then a linear decay over the last `decay_fraction` of the
  planned tokens (warmup-stable-decay). A checkpoint is kept where the decay starts, so a later
  session can EXTEND a finished run (`--tokens` larger): it rewinds to that point and continues the
  constant phase, instead of re-warming a decayed model.
- Checkpoints (model + optimizer + step + RNG) go to training/work/NAME/ckpt every few minutes and
  when the time budget ends; all tensors in safetensors, the rest in JSON.
- Every `eval_every` steps a row goes to miniatures/NAME/training_log.csv (training/metrics.py).
- When the planned tokens are reached (or, with export_partial, when the time budget ends) the
  weights are written to miniatures/NAME/ in bfloat16 with config, tokenizer and a model card.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm.auto import tqdm

from training.configs import Miniature, Schedule, count_parameters

LOG_COLUMNS = [
    "step", "tokens", "elapsed_s", "lr", "train_loss", "val_loss", "val_ppl", "draft", "draft_ppl",
    "draft_ppl_ratio", "alpha_k2", "alpha_k4", "copy_loss_full", "copy_loss_draft", "metrics_error",
]


# ------------------------------------------------------------------------------------------------
# Schedule


def learning_rate(schedule: Schedule, tokens_seen: int) -> float:
    """Warmup-stable-decay, as a function of tokens (not steps) so batch size can't shift it."""
    if tokens_seen < schedule.warmup_tokens:
        return schedule.lr * (tokens_seen + 1) / schedule.warmup_tokens
    decay_start = decay_start_tokens(schedule)
    if tokens_seen < decay_start:
        return schedule.lr
    progress = min(1.0, (tokens_seen - decay_start) / max(1, schedule.tokens - decay_start))
    return schedule.lr * (1.0 - 0.9 * progress)  # anneal to 10%


def decay_start_tokens(schedule: Schedule) -> int:
    return int(schedule.tokens * (1.0 - schedule.decay_fraction))


def batch_for_step(stream: np.ndarray, step: int, schedule: Schedule) -> torch.Tensor:
    """(batch, seq_len + 1) windows; a pure function of (seed, step)."""
    rng = np.random.default_rng([schedule.seed, step])
    starts = rng.integers(0, len(stream) - schedule.seq_len - 1, schedule.batch_size)
    rows = np.stack([stream[s: s + schedule.seq_len + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows)


def make_optimizer(model: torch.nn.Module, schedule: Schedule) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms, biases, SSM A/D/dt, which are vectors)."""
    decay, no_decay = [], []
    for _, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": schedule.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=schedule.lr, betas=(0.9, 0.95), eps=1e-8,
    )


def training_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


# ------------------------------------------------------------------------------------------------
# Checkpoints: safetensors for tensors, JSON for the rest, written to a temp folder then renamed


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0  # training time over all sessions (evaluation included)
    schedule: dict | None = None
    finished: bool = False


def save_checkpoint(folder: Path, model, optimizer, state: TrainState) -> None:
    folder = Path(folder)
    temp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    save_model(model, str(temp / "model.safetensors"))  # handles tied embeddings
    optimizer_state = optimizer.state_dict()
    tensors, per_param_keys = {}, {}
    for index, values in optimizer_state["state"].items():
        per_param_keys[str(index)] = sorted(values)
        for key, value in values.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value).contiguous()
    tensors["torch_rng_state"] = torch.get_rng_state()
    save_file(tensors, temp / "optimizer.safetensors")
    (temp / "state.json").write_text(json.dumps({
        "train_state": asdict(state),
        "param_groups": optimizer_state["param_groups"],
        "optimizer_keys": per_param_keys,
    }, indent=1))
    model.config.to_json_file(temp / "config.json")
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        temp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        temp.rename(folder)


def load_checkpoint(folder: Path, model, optimizer) -> TrainState:
    folder = Path(folder)
    load_model(model, str(folder / "model.safetensors"))
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(folder / "optimizer.safetensors")
    state = {int(index): {key: tensors[f"{index}.{key}"] for key in keys}
             for index, keys in meta["optimizer_keys"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["torch_rng_state"])
    return TrainState(**meta["train_state"])


def checkpoint_config_matches(folder: Path, config) -> bool:
    saved = json.loads((Path(folder) / "config.json").read_text())
    current = json.loads(config.to_json_string())
    ignore = {"transformers_version", "dtype", "torch_dtype"}
    return {k: v for k, v in saved.items() if k not in ignore} == \
        {k: v for k, v in current.items() if k not in ignore}


# ------------------------------------------------------------------------------------------------
# The training log


def append_log_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def truncate_log(path: Path, max_tokens: int) -> None:
    """Drop rows past a rewind point (they describe a run that is being replaced)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["tokens"]) <= max_tokens]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------------------------
# The loop


@dataclass
class RunResult:
    state: TrainState
    finished: bool
    model: torch.nn.Module
    stopped_by_time: bool


def train(
    miniature: Miniature,
    schedule: Schedule,
    train_stream: np.ndarray,
    work_dir: Path,
    log_path: Path | None = None,
    measure=None,  # callable(model) -> dict, or None (no metrics)
    eval_every: int = 100,
    max_minutes: float | None = None,
    checkpoint_minutes: float = 5.0,
    restart: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
) -> RunResult:
    """Train (or resume) miniature up to schedule.tokens, within max_minutes of wall time."""
    work_dir = Path(work_dir)
    ckpt, stable_ckpt = work_dir / "ckpt", work_dir / "ckpt-stable"
    config = miniature.config()
    if restart:
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(stable_ckpt, ignore_errors=True)
        if log_path is not None and Path(log_path).exists():
            Path(log_path).unlink()

    torch.manual_seed(schedule.seed)  # the initial weights
    model = miniature.model_class()(config)
    model.train()
    optimizer = make_optimizer(model, schedule)
    state = TrainState(schedule=asdict(schedule))

    if ckpt.exists():
        if not checkpoint_config_matches(ckpt, config):
            raise RuntimeError(f"{ckpt} was trained with another config than {miniature.name}'s "
                               f"current one: pass restart=True (--restart) to start over")
        state = load_checkpoint(ckpt, model, optimizer)
        saved = Schedule(**state.schedule)
        if replace(saved, tokens=schedule.tokens) != schedule:
            raise RuntimeError(f"{miniature.name}: the checkpoint's schedule {saved} differs from "
                               f"{schedule} in more than the planned tokens; use --restart")
        if schedule.tokens < saved.tokens:
            raise RuntimeError(f"{miniature.name}: cannot shrink a run ({saved.tokens} -> "
                               f"{schedule.tokens} tokens); use --restart")
        if schedule.tokens > saved.tokens and state.tokens > decay_start_tokens(saved):
            # Extending a run that already began its decay: go back to where the decay began.
            if not stable_ckpt.exists():
                raise RuntimeError(f"{miniature.name}: no {stable_ckpt} to extend from; use --restart")
            state = load_checkpoint(stable_ckpt, model, optimizer)
            if log_path is not None:
                truncate_log(Path(log_path), state.tokens)
            print(f"{miniature.name}: extending {saved.tokens} -> {schedule.tokens} tokens from the "
                  f"pre-decay checkpoint at {state.tokens} tokens", flush=True)
        state.schedule = asdict(schedule)
        state.finished = state.tokens >= schedule.tokens
        print(f"{miniature.name}: resumed at step {state.step}, {state.tokens:,} tokens, "
              f"{state.elapsed_s / 60:.1f} min trained so far", flush=True)

    tokens_per_step = schedule.batch_size * schedule.seq_len
    start_time = time.monotonic()
    last_checkpoint = start_time
    elapsed_at_start = state.elapsed_s
    losses: list[float] = []
    stopped_by_time = False

    def log_row() -> None:
        row = {"step": state.step, "tokens": state.tokens, "elapsed_s": state.elapsed_s,
               "lr": learning_rate(schedule, state.tokens),
               "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "draft": miniature.draft, "metrics_error": ""}
        if measure is not None:
            try:
                row.update(measure(model))
            except Exception as error:  # a broken metric must not kill hours of training
                row["metrics_error"] = f"{type(error).__name__}: {error}"[:200]
                print(f"{miniature.name}: metrics failed at step {state.step}: {row['metrics_error']}",
                      file=sys.stderr, flush=True)
        if log_path is not None:
            append_log_row(Path(log_path), row)
        losses.clear()

    if state.step == 0 and log_path is not None and not Path(log_path).exists():
        log_row()  # the untrained model: the chance-level baseline of every metric

    bar = tqdm(total=schedule.tokens, initial=min(state.tokens, schedule.tokens), unit="tok",
               unit_scale=True, desc=miniature.name, disable=not progress, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    try:
        while state.tokens < schedule.tokens:
            if max_steps is not None and state.step >= max_steps:
                break
            if max_minutes is not None and (time.monotonic() - start_time) / 60 >= max_minutes:
                stopped_by_time = True
                break
            # Save the pre-decay point once, for later extensions.
            if state.tokens >= decay_start_tokens(schedule) and not stable_ckpt.exists():
                state.elapsed_s = elapsed_at_start + time.monotonic() - start_time
                save_checkpoint(stable_ckpt, model, optimizer, state)

            lr = learning_rate(schedule, state.tokens)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = training_loss(model, batch_for_step(train_stream, state.step, schedule))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{miniature.name}: loss is {loss.item()} at step {state.step}")
            losses.append(loss.item())
            state.step += 1
            state.tokens += tokens_per_step
            state.elapsed_s = elapsed_at_start + time.monotonic() - start_time
            bar.update(tokens_per_step)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", refresh=False)

            if state.step % eval_every == 0 or state.tokens >= schedule.tokens:
                log_row()
            if time.monotonic() - last_checkpoint >= checkpoint_minutes * 60:
                save_checkpoint(ckpt, model, optimizer, state)
                last_checkpoint = time.monotonic()
    finally:
        bar.close()
    state.elapsed_s = elapsed_at_start + time.monotonic() - start_time
    state.finished = state.tokens >= schedule.tokens
    if losses and log_path is not None and not state.finished:
        log_row()  # where this session stopped
    save_checkpoint(ckpt, model, optimizer, state)
    return RunResult(state, state.finished, model, stopped_by_time)


def describe(model, miniature: Miniature) -> dict:
    config = model.config
    layer_types = list(getattr(config, "layer_types", None) or [])
    return {"parameters": count_parameters(model), "layers": config.num_hidden_layers,
            "layer_types": layer_types, "hidden_size": config.hidden_size}
