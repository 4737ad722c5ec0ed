"""Tiny seeded random-init models of every family, built in the tests (no downloads).

Besides minimal configs, two follow the real checkpoints' layouts scaled down:
Falcon-H1-0.5B-like (parallel in every layer, with its muP multipliers) and Qwen3.5-0.8B-like
(3 Gated DeltaNet layers per gated full-attention layer)."""
from __future__ import annotations

import torch

VOCAB = 96


def _finish(model, seed: int):
    model.eval()
    return model


def scale_attention(model, factor: float):
    """Scale every attention output projection: small factors make attention-free drafts nearly right,
    so a run sees both multi-token acceptances and mid-block rejections."""
    with torch.no_grad():
        for layer in model.model.layers:
            attention = getattr(layer, "self_attn", None)
            if attention is not None:
                attention.o_proj.weight.mul_(factor)
    return model


def falcon_h1(seed: int = 0, layers: int = 2, vocab: int = VOCAB, real_layout: bool = False, hidden: int = 32, init: float = 0.2):
    from transformers import FalconH1Config, FalconH1ForCausalLM
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
        mamba_d_ssm=hidden, mamba_n_heads=4, mamba_d_head=hidden // 4, mamba_d_state=8, mamba_d_conv=4,
        mamba_n_groups=1, mamba_chunk_size=16, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=init,
    )
    if real_layout:
        # Falcon-H1-0.5B-Base's muP multipliers (config.json of tiiuae/Falcon-H1-0.5B-Base).
        kwargs.update(
            embedding_multiplier=5.656854249492381, lm_head_multiplier=0.0390625,
            attention_in_multiplier=1.0, attention_out_multiplier=0.9375, key_multiplier=0.390625,
            ssm_in_multiplier=1.25, ssm_out_multiplier=0.23570226039551587,
            ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
            mlp_multipliers=[0.8838834764831844, 0.5859375], mamba_rms_norm=True, mamba_d_ssm=hidden * 3 // 2,
            mamba_n_heads=6, mamba_d_head=hidden // 4,
        )
    model = FalconH1ForCausalLM(FalconH1Config(**kwargs))
    return _finish(model, seed)


def qwen3_5(seed: int = 0, layers: int = 4, vocab: int = VOCAB, hidden: int = 32, interval: int = 4, init: float = 0.2):
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig
    torch.manual_seed(seed)
    layer_types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)]
    config = Qwen3_5TextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, layer_types=layer_types,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
        linear_conv_kernel_dim=4, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=init,
    )
    return _finish(Qwen3_5ForCausalLM(config), seed)


def qwen2(seed: int = 0, layers: int = 4, vocab: int = VOCAB, hidden: int = 32, init: float = 0.2):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=init,
    )
    return _finish(Qwen2ForCausalLM(config), seed)


def qwen3_next(seed: int = 0, layers: int = 4, vocab: int = VOCAB, hidden: int = 32, init: float = 0.3):
    """Qwen3-Next: Qwen3.5's sequential layout with sparse mixture-of-experts MLPs."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM
    torch.manual_seed(seed)
    config = Qwen3NextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=16,
        shared_expert_intermediate_size=16, num_experts=4, num_experts_per_tok=2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4,
        max_position_embeddings=512, initializer_range=init, decoder_sparse_step=1, mlp_only_layers=[],
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    return _finish(Qwen3NextForCausalLM(config), seed)
