"""What the training log measures, through the core library (hybridspec_core), in one place.

`measure(...)` is the only entry point the training loop calls. The drafts are the paper's: attention
off for the hybrids (Falcon-H1: every attention branch returns zeros; Qwen3.5: every full-attention
layer becomes the identity), the middle third of the layers skipped for the Qwen2.5 control.

The copy probe asks for recall that only attention-like mixing can do cheaply: a span of uniformly
random tokens appears once, natural text follows, then the same span again. The loss on the second
occurrence (all but its first token) is log(vocab) ~ 8.3 nats for a model that cannot look back,
and near 0 for one that copies. Measured with the full model and with the draft.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import hybridspec_core as hs

COPY_PREFIX_TOKENS = 64
COPY_SPAN_TOKENS = 32
COPY_GAP_TOKENS = 192  # natural text between the two occurrences: "far back" for a 4-token conv


def draft_for(draft_name: str) -> "hs.Draft":
    if draft_name == "attention_off":
        return hs.Draft.attention_off()
    if draft_name == "layer_skip":
        return hs.Draft.layer_skip(fraction=0.33)
    raise ValueError(f"unknown draft {draft_name!r}")


@dataclass
class EvalSet:
    """Fixed once per model (seeded), so every log row measures the same things."""
    validation: list[torch.Tensor]  # windows of seq_len + 1 tokens
    prompts: list[torch.Tensor]  # 1-D prompts for the one-round acceptance protocol
    copy_sequences: list[torch.Tensor]  # prefix + span + gap + span
    copy_target_start: int  # index of the first TARGET position of the second span's loss


def build_eval_set(validation_tokens: np.ndarray, prompt_token_lists: list[list[int]],
                   seq_len: int, vocab_size: int, n_windows: int = 16, n_prompts: int = 16,
                   n_copy: int = 16, first_regular_id: int = 2, seed: int = 1234) -> EvalSet:
    stream = torch.as_tensor(validation_tokens.astype(np.int64))
    usable = len(stream) - (seq_len + 1)
    starts = np.linspace(0, usable, n_windows).astype(int)  # spread over the whole split
    windows = [stream[s: s + seq_len + 1].clone() for s in starts]

    picks = np.linspace(0, len(prompt_token_lists) - 1, min(n_prompts, len(prompt_token_lists))).astype(int)
    prompts = [torch.tensor(prompt_token_lists[i], dtype=torch.long) for i in picks]

    rng = np.random.default_rng(seed)
    copy_sequences = []
    piece = COPY_PREFIX_TOKENS + COPY_GAP_TOKENS
    for _ in range(n_copy):
        start = int(rng.integers(0, len(stream) - piece))
        prefix = stream[start: start + COPY_PREFIX_TOKENS]
        gap = stream[start + COPY_PREFIX_TOKENS: start + piece]
        span = torch.as_tensor(rng.integers(first_regular_id, vocab_size, COPY_SPAN_TOKENS), dtype=torch.long)
        copy_sequences.append(torch.cat([prefix, span, gap, span]))
    # Predicting token j of the second span from its token j-1 needs the first span: positions of
    # the second span's tokens 1..end are the targets.
    copy_target_start = COPY_PREFIX_TOKENS + COPY_SPAN_TOKENS + COPY_GAP_TOKENS + 1
    return EvalSet(windows, prompts, copy_sequences, copy_target_start)


@torch.inference_mode()
def copy_probe_loss(model, eval_set: EvalSet, draft=None) -> float:
    """Mean loss (nats) on the second occurrence of the random span."""
    total, count = 0.0, 0
    for sequence in eval_set.copy_sequences:
        if draft is None:
            logits = model(sequence[:-1].unsqueeze(0), use_cache=False).logits[0].float()
        else:
            with hs.draft_view(model, draft):
                logits = model(sequence[:-1].unsqueeze(0), use_cache=False).logits[0].float()
        targets = sequence[eval_set.copy_target_start:]
        predictions = logits[eval_set.copy_target_start - 1:]
        total += float(F.cross_entropy(predictions, targets, reduction="sum"))
        count += targets.numel()
    return total / count


def measure(model, eval_set: EvalSet, draft_name: str, seq_len: int) -> dict:
    """One training-log row's metrics (the model is put in eval mode and restored)."""
    was_training = model.training
    model.eval()
    try:
        draft = draft_for(draft_name)
        ppl = hs.perplexity(model, eval_set.validation, max_length=seq_len)
        draft_ppl = hs.perplexity(model, eval_set.validation, draft=draft, max_length=seq_len)
        row = {
            "val_loss": math.log(ppl),
            "val_ppl": ppl,
            "draft_ppl": draft_ppl,
            "draft_ppl_ratio": draft_ppl / ppl,
        }
        for k in (2, 4):
            row[f"alpha_k{k}"] = hs.paper_protocol(model, eval_set.prompts, draft, k, temperature=0.0,
                                                   seed=0, n_boot=200)["alpha"]
        row["copy_loss_full"] = copy_probe_loss(model, eval_set)
        row["copy_loss_draft"] = copy_probe_loss(model, eval_set, draft)
        return row
    finally:
        model.train(was_training)
