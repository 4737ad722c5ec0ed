"""The measurements behind the zoo's sizes, batch and Falcon-H1 multipliers (training/README.md).

    python -m training.measure_first_steps steps      # s/step and tokens/s per model, batch 4 and 8
    python -m training.measure_first_steps multipliers  # falcon-h1-s, first 80 steps, 3 multiplier sets

One thread (the budget the background training runs under); needs the token cache that
`python -m training.make_miniatures` builds first. Several minutes each: run one at a time.
"""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import torch

from training.configs import FALCON_H1_05B, SCHEDULES, ZOO
from training.corpus import WORK_DIR
from training.train import batch_for_step, learning_rate, make_optimizer, training_loss


def run(miniature, config, stream, batch_size: int, steps: int, lr: float = 3e-3):
    """Median step time (after 2 warm-up steps) and the losses, from seed 0."""
    torch.manual_seed(0)
    model = miniature.model_class()(config)
    model.train()
    schedule = dataclasses.replace(SCHEDULES["s"], batch_size=batch_size, lr=lr,
                                   warmup_tokens=10 * batch_size * 512)
    optimizer = make_optimizer(model, schedule)
    times, losses = [], []
    for step in range(steps):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(schedule, step * batch_size * schedule.seq_len)
        loss = training_loss(model, batch_for_step(stream, step, schedule))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return float(np.median(times[2:])), losses


def main(what: str) -> None:
    torch.set_num_threads(1)
    stream = np.load(sorted((WORK_DIR / "tokens").glob("train-*.npy"))[0])
    if what == "steps":
        for name, miniature in ZOO.items():
            for batch_size in (4, 8):
                seconds, _ = run(miniature, miniature.config(), stream, batch_size, 8)
                print(f"{name} batch {batch_size}: {seconds:.2f} s/step, "
                      f"{batch_size * 512 / seconds:.0f} tokens/s", flush=True)
    elif what == "multipliers":
        miniature = ZOO["falcon-h1-s"]
        verbatim = miniature.config()
        verbatim.lm_head_multiplier = FALCON_H1_05B["lm_head_multiplier"]
        ones = miniature.config()
        for key in ("attention_in_multiplier", "attention_out_multiplier", "embedding_multiplier",
                    "key_multiplier", "lm_head_multiplier", "ssm_in_multiplier", "ssm_out_multiplier"):
            setattr(ones, key, 1.0)
        ones.mlp_multipliers, ones.ssm_multipliers = [1.0, 1.0], [1.0] * 5
        for label, config in (("verbatim", verbatim), ("all-1", ones),
                              ("lm_head muP-transferred (the zoo's)", miniature.config())):
            for lr in (3e-3, 6e-3):
                _, losses = run(miniature, config, stream, 4, 80, lr=lr)
                print(f"{label}, lr {lr:g}: mean loss steps 60-80 {np.mean(losses[60:]):.3f}", flush=True)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
