"""BASELINE, NOT hybridspec: the paper's speculative decoding, re-implemented for the speed comparison.

The paper (Borobia, Seguí-Mas, Tormo-Carbó, 2026, arXiv 2605.01106) timed speculative decoding whose
verification re-runs the whole prefix WITHOUT a cache, so that no state is ever rolled back
(/work/shared/paper/README.md, "Where the original falls short"). Its code is not available here;
this is a faithful re-implementation of that protocol, in its cheapest form, so that the ratio
"hybridspec / paper protocol" is if anything an UNDER-estimate of what caching and rollback buy:

- draft: the same draft view as hybridspec (``hs.draft_view``), re-encoding the prefix once per
  step (a fresh cache: nothing to roll back) and then drafting k tokens with that cache;
- verify: ONE forward of prefix + k drafts with ``use_cache=False`` (the whole prefix again);
- accept: the longest prefix of drafts equal to the full model's argmax, plus the full model's
  own next token (so greedy output equals plain greedy decoding, up to float noise).

Greedy only (the paper's wall-clock numbers are at T = 0).
"""
from __future__ import annotations

import time

import torch

import hybridspec_core as hs


@torch.inference_mode()
def paper_protocol_generate(model, input_ids, draft: hs.Draft, k: int, max_new_tokens: int) -> dict:
    """Generate ``max_new_tokens`` tokens the paper's way. Returns tokens, seconds, steps, accepted."""
    plan = draft.plan(hs.anatomy(model))
    sequence = torch.as_tensor(input_ids).reshape(-1).to(hs._model_device(model))
    prompt_length = sequence.numel()
    accepted_per_step = []
    started = time.perf_counter()
    while sequence.numel() - prompt_length < max_new_tokens:
        n = min(k, max_new_tokens - (sequence.numel() - prompt_length) - 1)
        drafts = sequence.new_empty(0)
        if n:
            cache = hs.new_cache(model)  # re-encode the prefix: no state survives a step
            with hs.draft_view(model, plan):
                logits = hs._forward(model, sequence, cache, 0, last_only=True, mask_layer=plan.mask_layer)
                proposed = []
                for i in range(n):
                    token = logits[-1].argmax().view(1)
                    proposed.append(token)
                    if i < n - 1:
                        logits = hs._forward(model, token, cache, sequence.numel() + i, last_only=True,
                                             mask_layer=plan.mask_layer)
            drafts = torch.cat(proposed)
        # Verify: the whole prefix again, no cache; logits for the last prefix position and the drafts.
        full = model(torch.cat([sequence, drafts]).unsqueeze(0), use_cache=False, logits_to_keep=n + 1).logits[0]
        predicted = full.argmax(-1)
        accepted = int((predicted[:n] == drafts).int().cumprod(0).sum()) if n else 0
        accepted_per_step.append(accepted)
        sequence = torch.cat([sequence, drafts[:accepted], predicted[accepted: accepted + 1]])
    seconds = time.perf_counter() - started
    return {"tokens": sequence[prompt_length:], "seconds": seconds, "steps": len(accepted_per_step),
            "accepted": accepted_per_step}
