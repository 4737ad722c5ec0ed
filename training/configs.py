"""The zoo: each miniature is its real family's layout scaled down, with the real configs' ratios.

Real configs the ratios come from (values copied from public copies of their config.json; see
REAL_CONFIGS below for the fields used and where they were read):
- Falcon-H1-0.5B-Base: 36 layers, hidden 1024; attention 8 heads x 64 (= 0.5 x hidden), 2 KV heads;
  Mamba-2 d_ssm 1536 (= 1.5 x hidden), 24 heads x 64, d_state 128 (= hidden / 8), 1 group;
  MLP 2048 (= 2 x hidden); muP multipliers (below); rope_theta 1e11; untied embeddings.
- Qwen3.5-0.8B(-Base): 24 layers = 6 x [3 Gated DeltaNet, 1 gated full attention], hidden 1024;
  attention 8 heads x 256 (head_dim = hidden / 4), 2 KV heads, output gate, partial rotary 0.25,
  rope_theta 1e7; DeltaNet 16 key heads and 16 value heads x 128 (= hidden / 8); MLP 3584
  (= 3.5 x hidden); tied embeddings.
- Qwen2.5-0.5B: 24 layers, hidden 896; 14 heads x 64, 2 KV heads (7:1); MLP 4864 (= 5.43 x hidden);
  rope_theta 1e6; tied embeddings.

Scaling rule: widths keep their ratio to hidden_size; head counts shrink where a head would get
narrower than MIN_HEAD_DIM (attention) or MIN_RECURRENT_HEAD_DIM (DeltaNet); depth is the real depth halved or
more, never under 12 layers; the muP multipliers of Falcon-H1 are copied verbatim (they set how
strongly each branch writes into the residual stream, which is exactly what the attention-off draft
removes), except lm_head_multiplier, which muP scales with 1 / width and is transferred accordingly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from transformers import (
    FalconH1Config,
    FalconH1ForCausalLM,
    PreTrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3_5ForCausalLM,
    Qwen3_5TextConfig,
)

VOCAB_SIZE = 4096  # training/tokenizer.py
EOS_ID, PAD_ID = 0, 1  # "<|endoftext|>" (also bos) and "<|pad|>"
MAX_POSITIONS = 4096  # >= 2048; RoPE, so it costs nothing until used

# Falcon-H1-0.5B-Base's muP multipliers and widths, as in its config.json.
# Read from a verbatim copy in NVIDIA Megatron-Bridge's unit test (FALCON_H1_500M_CONFIG), which
# matches the config.json of MerlinSafety/HybridIntelligence-0.5B (a Falcon-H1-0.5B derivative).
FALCON_H1_05B = dict(
    hidden_size=1024, num_hidden_layers=36, intermediate_size=2048,
    num_attention_heads=8, num_key_value_heads=2, head_dim=64,
    mamba_d_ssm=1536, mamba_n_heads=24, mamba_d_head=64, mamba_d_state=128, mamba_n_groups=1,
    mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=128, mamba_conv_bias=True,
    mamba_proj_bias=False, mamba_norm_before_gate=False, mamba_rms_norm=False,
    attention_in_multiplier=1.0, attention_out_multiplier=0.9375,
    embedding_multiplier=5.656854249492381, key_multiplier=0.39062499999999994,
    lm_head_multiplier=0.0390625, mlp_multipliers=[0.8838834764831844, 0.5859375],
    ssm_in_multiplier=1.25,
    ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
    ssm_out_multiplier=0.23570226039551587,
    rope_theta=1e11, rms_norm_eps=1e-5, tie_word_embeddings=False, vocab_size=32784,
    max_position_embeddings=16384,
)
# Qwen3.5-0.8B text_config, from public verbatim mirrors of its config.json (two independent test
# fixtures agree: hidden 1024, 24 layers, [L,L,L,F] x 6, ...).
QWEN3_5_08B = dict(
    hidden_size=1024, num_hidden_layers=24, intermediate_size=3584,
    num_attention_heads=8, num_key_value_heads=2, head_dim=256, attn_output_gate=True,
    linear_num_key_heads=16, linear_num_value_heads=16, linear_key_head_dim=128,
    linear_value_head_dim=128, linear_conv_kernel_dim=4, full_attention_interval=4,
    partial_rotary_factor=0.25, rope_theta=1e7, rms_norm_eps=1e-6, tie_word_embeddings=True,
    vocab_size=248320, max_position_embeddings=262144,
)
# Qwen/Qwen2.5-0.5B config.json (read from a verbatim re-upload whose _name_or_path is it).
QWEN2_5_05B = dict(
    hidden_size=896, num_hidden_layers=24, intermediate_size=4864,
    num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
    tie_word_embeddings=True, vocab_size=151936, max_position_embeddings=32768,
)
REAL_CONFIGS = {
    "falcon-h1": ("tiiuae/Falcon-H1-0.5B-Base", FALCON_H1_05B),
    "qwen3.5": ("Qwen/Qwen3.5-0.8B-Base", QWEN3_5_08B),
    "qwen2.5": ("Qwen/Qwen2.5-0.5B", QWEN2_5_05B),
}

# Narrowest heads allowed: attention heads need room for position + content (copying needs both);
# recurrent (Mamba-2 / DeltaNet) heads carry a d_head x d_state memory each, so they can be narrower.
MIN_HEAD_DIM = 32
MIN_RECURRENT_HEAD_DIM = 16


def _ratio(real: dict, key: str, hidden: int, multiple: int = 16) -> int:
    """real[key] / real hidden * hidden, rounded to a multiple (kernels and heads like multiples)."""
    value = real[key] / real["hidden_size"] * hidden
    return max(multiple, int(round(value / multiple)) * multiple)


def falcon_h1_config(hidden: int, layers: int, mamba_chunk_size: int = 64) -> FalconH1Config:
    real = FALCON_H1_05B
    head_dim = max(MIN_HEAD_DIM, _ratio(real, "head_dim", hidden, 8))
    attention_width = real["num_attention_heads"] * real["head_dim"] / real["hidden_size"] * hidden
    num_heads = max(1, int(attention_width // head_dim))
    num_kv_heads = max(1, num_heads * real["num_key_value_heads"] // real["num_attention_heads"])
    mamba_head_dim = head_dim  # the real model uses the same 64 for both
    d_ssm = _ratio(real, "mamba_d_ssm", hidden, mamba_head_dim)  # whole heads
    return FalconH1Config(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=layers,
        intermediate_size=_ratio(real, "intermediate_size", hidden),
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=head_dim,
        mamba_d_ssm=d_ssm, mamba_n_heads=d_ssm // mamba_head_dim, mamba_d_head=mamba_head_dim,
        mamba_d_state=max(16, _ratio(real, "mamba_d_state", hidden, 8)),
        mamba_n_groups=1, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=mamba_chunk_size,
        mamba_conv_bias=True, mamba_proj_bias=False, mamba_norm_before_gate=False,
        mamba_rms_norm=False, mamba_use_mlp=True, projectors_bias=False,
        attention_in_multiplier=real["attention_in_multiplier"],
        attention_out_multiplier=real["attention_out_multiplier"],
        embedding_multiplier=real["embedding_multiplier"],
        key_multiplier=real["key_multiplier"],
        # muP transfer of the OUTPUT multiplier to the smaller width (x real width / width): with the
        # verbatim 0.039 the logits start ~8x too small for this width and the first 80 steps of
        # falcon-h1-s ended at loss 7.5 instead of 6.5 (training/README.md, "Falcon-H1 multipliers").
        lm_head_multiplier=real["lm_head_multiplier"] * real["hidden_size"] / hidden,
        mlp_multipliers=list(real["mlp_multipliers"]),
        ssm_in_multiplier=real["ssm_in_multiplier"],
        ssm_multipliers=list(real["ssm_multipliers"]),
        ssm_out_multiplier=real["ssm_out_multiplier"],
        rope_parameters={"rope_type": "default", "rope_theta": real["rope_theta"]},
        rms_norm_eps=real["rms_norm_eps"], tie_word_embeddings=real["tie_word_embeddings"],
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=PAD_ID, bos_token_id=EOS_ID, eos_token_id=EOS_ID,
    )


def qwen3_5_config(hidden: int, layers: int) -> Qwen3_5TextConfig:
    real = QWEN3_5_08B
    interval = real["full_attention_interval"]
    assert layers % interval == 0, "keep whole [DeltaNet x 3, attention] blocks"
    head_dim = max(MIN_HEAD_DIM, _ratio(real, "head_dim", hidden, 8))
    q_width = real["num_attention_heads"] * real["head_dim"] / real["hidden_size"] * hidden
    num_heads = max(1, int(q_width // head_dim))
    linear_head_dim = max(MIN_RECURRENT_HEAD_DIM, _ratio(real, "linear_key_head_dim", hidden, 8))
    linear_width = real["linear_num_key_heads"] * real["linear_key_head_dim"] / real["hidden_size"] * hidden
    linear_heads = max(1, int(linear_width // linear_head_dim))
    return Qwen3_5TextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=layers,
        intermediate_size=_ratio(real, "intermediate_size", hidden),
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads * real["num_key_value_heads"] // real["num_attention_heads"]),
        head_dim=head_dim,
        linear_num_key_heads=linear_heads, linear_num_value_heads=linear_heads,
        linear_key_head_dim=linear_head_dim, linear_value_head_dim=linear_head_dim,
        linear_conv_kernel_dim=real["linear_conv_kernel_dim"],
        # Explicit, as in the real config: every 4th layer is (gated) full attention.
        layer_types=["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                     for i in range(layers)],
        rope_parameters={"rope_type": "default", "rope_theta": real["rope_theta"],
                         "partial_rotary_factor": real["partial_rotary_factor"]},
        rms_norm_eps=real["rms_norm_eps"], tie_word_embeddings=real["tie_word_embeddings"],
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=PAD_ID, bos_token_id=EOS_ID, eos_token_id=EOS_ID,
    )


def qwen2_5_config(hidden: int, layers: int) -> Qwen2Config:
    real = QWEN2_5_05B
    # The real heads are hidden / 14 = 64 wide, which would be 8 here: use about MIN_HEAD_DIM-wide
    # heads instead, keeping the real q width (= hidden).
    num_heads = max(1, round(hidden / MIN_HEAD_DIM))
    head_dim = hidden // num_heads
    return Qwen2Config(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=layers,
        intermediate_size=_ratio(real, "intermediate_size", hidden),
        num_attention_heads=num_heads, head_dim=head_dim,
        num_key_value_heads=max(1, num_heads * real["num_key_value_heads"] // real["num_attention_heads"]),
        rope_parameters={"rope_type": "default", "rope_theta": real["rope_theta"]},
        rms_norm_eps=real["rms_norm_eps"], tie_word_embeddings=real["tie_word_embeddings"],
        max_position_embeddings=MAX_POSITIONS, use_sliding_window=False,
        pad_token_id=PAD_ID, bos_token_id=EOS_ID, eos_token_id=EOS_ID,
    )


@dataclass(frozen=True)
class Miniature:
    name: str
    family: str  # "falcon-h1" | "qwen3.5" | "qwen2.5"
    size_class: str  # "s" | "m": same class -> same tokens, sequence length and schedule
    hidden: int
    layers: int
    draft: str  # the draft the training log measures: "attention_off" or "layer_skip"
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def config(self) -> PreTrainedConfig:
        if self.family == "falcon-h1":
            return falcon_h1_config(self.hidden, self.layers, **self.extra)
        if self.family == "qwen3.5":
            return qwen3_5_config(self.hidden, self.layers, **self.extra)
        if self.family == "qwen2.5":
            return qwen2_5_config(self.hidden, self.layers, **self.extra)
        raise ValueError(self.family)

    def model_class(self):
        return {"falcon-h1": FalconH1ForCausalLM, "qwen3.5": Qwen3_5ForCausalLM,
                "qwen2.5": Qwen2ForCausalLM}[self.family]

    @property
    def real_checkpoint(self) -> str:
        return REAL_CONFIGS[self.family][0]


ZOO: dict[str, Miniature] = {
    m.name: m
    for m in [
        Miniature("falcon-h1-s", "falcon-h1", "s", hidden=128, layers=12, draft="attention_off"),
        Miniature("qwen3.5-s", "qwen3.5", "s", hidden=112, layers=12, draft="attention_off"),
        Miniature("qwen2.5-s", "qwen2.5", "s", hidden=112, layers=12, draft="layer_skip"),
        Miniature("falcon-h1-m", "falcon-h1", "m", hidden=160, layers=20, draft="attention_off"),
    ]
}
TRAINING_ORDER = ["falcon-h1-s", "qwen3.5-s", "qwen2.5-s", "falcon-h1-m"]


@dataclass(frozen=True)
class Schedule:
    """What same-size models share, so that their differences come from architecture."""
    tokens: int  # planned total; sets the LR schedule
    seq_len: int
    batch_size: int
    lr: float
    warmup_tokens: int
    decay_fraction: float = 0.2  # warmup-stable-decay: the last 20% of tokens anneal to 10%
    weight_decay: float = 0.1
    seed: int = 0


# Tokens: 3M, about one pass over the 2.9M-token train split; what the slowest small model
# (qwen3.5-s, ~750-1075 tokens/s on one thread) sees in about an hour, and -m (~400 tokens/s) in about
# two. -m gets the same tokens (the scale pair differs in parameters only). The shipped zoo was first
# trained to 1.5M and then extended (--tokens 3000000): the extension rewinds to the checkpoint where
# the decay began, and as the LR is constant until then and batches are seeded by step, that is the
# same run as one planned for 3M from the start. Batch 4 x 512: the same throughput as 8 x 512 on one
# thread, twice the optimizer steps. LR: 3e-3 for the small ones; -m at 3e-3 x 128 / 160 (Adam's muP
# rule for hidden matrices: LR ~ 1 / width).
SCHEDULES = {
    "s": Schedule(tokens=3_000_000, seq_len=512, batch_size=4, lr=3e-3, warmup_tokens=100_000),
    "m": Schedule(tokens=3_000_000, seq_len=512, batch_size=4, lr=2.4e-3, warmup_tokens=100_000),
}


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
