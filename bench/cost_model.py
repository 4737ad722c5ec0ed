"""Analytic cost model of one decoding forward of the paper's REAL checkpoints (PREDICTED, not measured).

No real checkpoint can be run here, so where the CPU miniatures are too small to show where
speculation pays, this module counts, from the published configs, what one forward pass costs:

- FLOPs: 2 per multiply-add of every weight matrix the view computes, plus attention over the
  context (QK^T and AV: 4 * heads * head_dim * T per attention layer and token), plus the
  recurrent state update and read-out (Mamba-2: ~5 per state element; Gated DeltaNet: ~6).
- bytes moved: every weight the view computes (bf16), the KV cache it reads (bf16, full attention
  over T tokens), the recurrent states it reads and writes (fp32, as the mamba-ssm / fla kernels
  keep them), and the new KV it writes.

and turns that into a time with a roofline: ``max(FLOPs / peak, bytes / bandwidth)`` on an assumed
accelerator (``DEVICE``: H100 SXM class, bf16 dense 989 TFLOP/s, 3.35 TB/s). Kernel launches,
Python overhead, norms, rotary embeddings, the conv1d and the embedding lookup are left out: the
paper's own timings (23 tokens/s for Falcon-H1-0.5B) are far from this roofline, so what this
model predicts is the RATIO c = draft / full and v(k) = (k+1)-token verify / 1-token forward, and
from them S = tau / (k c + v), not absolute speeds. At batch 1 every view is memory-bound, so
c ~ bytes ratio and v(k) ~ 1.

Configs (hidden sizes, heads, ...): the brief of issue 5 and training/configs.py (copied from the
public config.json files). Vocabulary sizes: Falcon-H1-0.5B 32,784 (training/configs.py's copy of
its config.json; untied embeddings), Qwen3.5-0.8B 248,320 (tied), Qwen2.5-0.5B 151,936 (tied).
"""
from __future__ import annotations

import dataclasses
import math

BF16 = 2
FP32 = 4
DEVICE = {"name": "H100 SXM class (assumed)", "flops": 989e12, "bandwidth": 3.35e12}


@dataclasses.dataclass(frozen=True)
class RealConfig:
    key: str                      # the paper's model key
    display: str
    family: str                   # parallel | sequential | transformer
    layers: int
    hidden: int
    vocab: int
    tied: bool
    mlp: int                      # gated MLP width (gate, up: hidden -> mlp; down: mlp -> hidden)
    heads: int
    kv_heads: int
    head_dim: int
    attention_layers: tuple[int, ...]
    q_gate: bool = False          # Qwen3.5: q_proj also emits an output gate
    # recurrent mixer (Falcon-H1: Mamba-2 in every layer beside attention; Qwen3.5: Gated DeltaNet layers)
    mixer: str | None = None      # "mamba2" | "deltanet"
    mixer_layers: tuple[int, ...] = ()
    ssm_width: int = 0            # Mamba-2 d_ssm; DeltaNet value width
    ssm_heads: int = 0
    ssm_head_dim: int = 0
    ssm_state: int = 0            # Mamba-2 d_state; DeltaNet key head dim
    ssm_key_width: int = 0        # DeltaNet key width (q and k)
    max_positions: int = 32768


FALCON_H1_05B = RealConfig(
    key="falcon-h1-0.5b", display="Falcon-H1-0.5B", family="parallel", layers=36, hidden=1024, vocab=32784,
    tied=False, mlp=2048, heads=8, kv_heads=2, head_dim=64, attention_layers=tuple(range(36)),
    mixer="mamba2", mixer_layers=tuple(range(36)), ssm_width=1536, ssm_heads=24, ssm_head_dim=64, ssm_state=128,
    max_positions=16384)
QWEN3_5_08B = RealConfig(
    key="qwen3.5-0.8b", display="Qwen3.5-0.8B", family="sequential", layers=24, hidden=1024, vocab=248320,
    tied=True, mlp=3584, heads=8, kv_heads=2, head_dim=256, q_gate=True,
    attention_layers=tuple(i for i in range(24) if (i + 1) % 4 == 0),
    mixer="deltanet", mixer_layers=tuple(i for i in range(24) if (i + 1) % 4), ssm_width=2048, ssm_heads=16,
    ssm_head_dim=128, ssm_state=128, ssm_key_width=2048, max_positions=262144)
QWEN2_5_05B = RealConfig(
    key="qwen2.5-0.5b", display="Qwen2.5-0.5B", family="transformer", layers=24, hidden=896, vocab=151936,
    tied=True, mlp=4864, heads=14, kv_heads=2, head_dim=64, attention_layers=tuple(range(24)),
    max_positions=32768)
REAL_MODELS = (FALCON_H1_05B, QWEN3_5_08B, QWEN2_5_05B)

# The paper's greedy alpha (acceptance_rate.csv / strategy_comparison.csv, T = 0): (model key, draft) -> {k: alpha}.
PAPER_ALPHA = {
    ("falcon-h1-0.5b", "attention_off"): {2: 0.68, 4: 0.37, 8: 0.186},
    ("qwen3.5-0.8b", "attention_off"): {2: 0.0375, 4: 0.01875, 8: 0.009375},
    ("qwen2.5-0.5b", "layer_skip"): {2: 0.52, 4: 0.326, 8: 0.179},
    ("qwen3.5-0.8b", "layer_skip"): {4: 0.2325},
}


def iid_acceptance(alpha_k: float, k: int) -> float:
    """Per-token acceptance p that gives the paper's alpha at k if each draft token is accepted
    independently with probability p: alpha(k) = E[accepted] / k = p (1 - p^k) / (k (1 - p))."""
    low, high = 0.0, 1.0 - 1e-12
    for _ in range(100):
        p = (low + high) / 2
        low, high = (p, high) if iid_alpha(p, k) < alpha_k else (low, p)
    return (low + high) / 2


def iid_alpha(p: float, k: int) -> float:
    return p * (1 - p ** k) / (k * (1 - p)) if p < 1 else 1.0


def draft_layers(cfg: RealConfig, draft: str) -> tuple[set[int], set[int]]:
    """(skipped layers, layers whose attention is off) for the hybridspec draft of that name."""
    if draft == "full":
        return set(), set()
    if draft == "attention_off":
        if cfg.family == "parallel":
            return set(), set(cfg.attention_layers)
        if cfg.family == "sequential":
            return set(cfg.attention_layers), set()
        raise ValueError("attention_off needs a hybrid")
    if draft == "layer_skip":      # Draft.layer_skip(fraction=0.33): the middle third
        count = int(0.33 * cfg.layers)
        start = (cfg.layers - count) // 2
        return set(range(start, start + count)), set()
    if draft == "early_exit":      # Draft.early_exit(layers // 2)
        return set(range(cfg.layers // 2, cfg.layers)), set()
    raise ValueError(draft)


def _attention(cfg: RealConfig, tokens: int, context: int) -> tuple[float, float, float]:
    """(weight params, FLOPs, bytes besides weights) of one attention sublayer."""
    q_out = cfg.heads * cfg.head_dim * (2 if cfg.q_gate else 1)
    kv_out = 2 * cfg.kv_heads * cfg.head_dim
    params = cfg.hidden * q_out + cfg.hidden * kv_out + cfg.heads * cfg.head_dim * cfg.hidden
    flops = 4 * cfg.heads * cfg.head_dim * (context + tokens) * tokens
    kv_bytes = kv_out * BF16 * (context + tokens)   # read the whole cache once, write the new rows
    return params, flops, kv_bytes


def _mixer(cfg: RealConfig, tokens: int) -> tuple[float, float, float]:
    """(weight params, FLOPs, bytes besides weights) of one recurrent mixer."""
    h = cfg.hidden
    if cfg.mixer == "mamba2":
        conv_dim = cfg.ssm_width + 2 * cfg.ssm_state          # x, B, C (1 group)
        params = h * (cfg.ssm_width + conv_dim + cfg.ssm_heads) + cfg.ssm_width * h
        state = cfg.ssm_heads * cfg.ssm_head_dim * cfg.ssm_state
        flops_state = 5 * state * tokens
    elif cfg.mixer == "deltanet":
        conv_dim = 2 * cfg.ssm_key_width + cfg.ssm_width
        params = h * conv_dim + h * cfg.ssm_width + 2 * h * cfg.ssm_heads + cfg.ssm_width * h
        state = cfg.ssm_heads * cfg.ssm_head_dim * cfg.ssm_state
        flops_state = 6 * state * tokens
    else:
        return 0.0, 0.0, 0.0
    return params, flops_state, 2 * state * FP32           # read and write the state once per forward


def forward_cost(cfg: RealConfig, draft: str = "full", tokens: int = 1, context: int = 0) -> dict:
    """FLOPs, bytes and roofline seconds of one cached forward of ``tokens`` tokens after ``context``."""
    skipped, attention_off = draft_layers(cfg, draft)
    params = flops = extra_bytes = 0.0
    for layer in range(cfg.layers):
        if layer in skipped:
            continue
        if layer in cfg.attention_layers and layer not in attention_off:
            p, f, b = _attention(cfg, tokens, context)
            params, flops, extra_bytes = params + p, flops + f, extra_bytes + b
        if layer in cfg.mixer_layers:
            p, f, b = _mixer(cfg, tokens)
            params, flops, extra_bytes = params + p, flops + f, extra_bytes + b
        params += 3 * cfg.hidden * cfg.mlp
    params += cfg.vocab * cfg.hidden                         # lm_head (the embedding row read is negligible)
    flops += 2 * params * tokens
    total_bytes = params * BF16 + extra_bytes + 2 * tokens * cfg.hidden * BF16
    seconds = max(flops / DEVICE["flops"], total_bytes / DEVICE["bandwidth"])
    return {"params": params, "flops": flops, "bytes": total_bytes, "seconds": seconds}


def drafts_for(cfg: RealConfig) -> list[str]:
    return (["attention_off"] if cfg.family != "transformer" else []) + ["layer_skip", "early_exit"]


def predicted_rows(contexts=(128, 512, 2048, 8192, 16384, 32768, 131072, 262144), ks=(1, 2, 3, 4, 6, 8)) -> list[dict]:
    """One row per real model, draft, k and context: c, v(k) and, where the paper measured alpha,
    the predicted speedup S = tau / (k c + v) with tau = alpha k + 1 (the paper's expected tokens
    per step). Contexts beyond a model's max_position_embeddings are left out."""
    rows = []
    for cfg in REAL_MODELS:
        for context in contexts:
            if context > cfg.max_positions:
                continue
            full = forward_cost(cfg, "full", 1, context)
            for draft in drafts_for(cfg):
                d = forward_cost(cfg, draft, 1, context)
                c = d["seconds"] / full["seconds"]
                alphas = PAPER_ALPHA.get((cfg.key, draft), {})
                # k = 2 (or the one k measured) fixes an iid per-token acceptance for the other k.
                k0 = min(alphas, key=lambda kk: abs(kk - 2)) if alphas else None
                p = iid_acceptance(alphas[k0], k0) if alphas else None
                for k in ks:
                    verify = forward_cost(cfg, "full", k + 1, context)
                    v = verify["seconds"] / full["seconds"]
                    alpha = alphas.get(k)
                    tau = alpha * k + 1 if alpha is not None else None
                    alpha_iid = iid_alpha(p, k) if p is not None else None
                    tau_iid = alpha_iid * k + 1 if p is not None else None
                    rows.append({
                        "model": cfg.key, "display": cfg.display, "family": cfg.family, "draft": draft, "k": k,
                        "context": context, "kind": "predicted",
                        "c": c, "c_flops": d["flops"] / full["flops"], "c_bytes": d["bytes"] / full["bytes"],
                        "v": v, "v_flops": verify["flops"] / full["flops"],
                        "alpha_paper": alpha, "tau": tau,
                        "predicted_speedup": tau / (k * c + v) if tau is not None else None,
                        "alpha_iid": alpha_iid,
                        "predicted_speedup_iid": tau_iid / (k * c + v) if p is not None else None,
                        "alpha_needed": (k * c + v - 1) / k,   # alpha at which S = 1 (tau = alpha k + 1)
                        "full_gflops": full["flops"] / 1e9, "full_mbytes": full["bytes"] / 1e6,
                    })
    return rows


def break_even_contexts(ks=(1, 2, 3, 4, 6, 8)) -> list[dict]:
    """Per real model, draft (with a paper alpha) and k: the shortest context at which the predicted
    speedup reaches 1 (bisection on a log scale up to max_position_embeddings; None if never).
    alpha is the paper's where it measured that k, else the iid extrapolation from its k = 2."""
    out = []
    for (key, draft), alphas in PAPER_ALPHA.items():
        cfg = next(c for c in REAL_MODELS if c.key == key)
        k0 = min(alphas, key=lambda kk: abs(kk - 2))
        p = iid_acceptance(alphas[k0], k0)
        for k in ks:
            alpha = alphas.get(k, iid_alpha(p, k))
            source = "paper" if k in alphas else f"iid fit to the paper's k={k0}"
            tau = alpha * k + 1

            def speedup(context: float) -> float:
                full = forward_cost(cfg, "full", 1, int(context))["seconds"]
                c = forward_cost(cfg, draft, 1, int(context))["seconds"] / full
                v = forward_cost(cfg, "full", k + 1, int(context))["seconds"] / full
                return tau / (k * c + v)

            low, high = 1.0, float(cfg.max_positions)
            at_max = speedup(high)
            if speedup(low) >= 1:
                context = 1
            elif at_max < 1:
                context = None
            else:
                for _ in range(60):
                    mid = math.sqrt(low * high)
                    low, high = (mid, high) if speedup(mid) < 1 else (low, mid)
                context = int(math.ceil(high))
            out.append({"model": key, "draft": draft, "k": k, "alpha": alpha, "alpha_source": source,
                        "kind": "predicted",
                        "break_even_context": context, "max_positions": cfg.max_positions,
                        "speedup_at_max_positions": at_max})
    return out


if __name__ == "__main__":  # a quick look: python bench/cost_model.py
    for row in break_even_contexts():
        print(row)
    for cfg in REAL_MODELS:
        full = forward_cost(cfg)
        print(cfg.display, f"{full['params'] / 1e6:.0f}M params read per token, {full['bytes'] / 1e6:.0f} MB, "
              f"{full['flops'] / 1e9:.2f} GFLOP")
