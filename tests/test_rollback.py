"""How speculative_generate rolls the full model back (issue 5): per-position recurrent states
recomputed from the verify's own scan inputs (no re-feed), the exact fallback for mixers it does
not know, short chunks for short blocks, and patches that never outlive a generation."""
from __future__ import annotations

import functools

import pytest
import torch

import hybridspec_core as hs
import tiny_models as tm
from transformers.models.falcon_h1 import modeling_falcon_h1
from transformers.models.qwen3_5 import modeling_qwen3_5

HYBRIDS = {
    "falcon_h1": lambda: tm.scale_attention(tm.falcon_h1(21, layers=4, init=0.3), 0.1),
    "qwen3_5": lambda: tm.scale_attention(tm.qwen3_5(22, layers=8, init=0.3), 0.1),
}
ORIGINALS = {
    (modeling_falcon_h1, "mamba2_chunk_scan"): modeling_falcon_h1.mamba2_chunk_scan,
    (modeling_qwen3_5, "torch_chunk_gated_delta_rule"): modeling_qwen3_5.torch_chunk_gated_delta_rule,
}


def prompt(seed: int, length: int = 11) -> torch.Tensor:
    return torch.randint(0, tm.VOCAB, (length,), generator=torch.Generator().manual_seed(seed))


def assert_unpatched(out=None):
    for (module, name), original in ORIGINALS.items():
        assert getattr(module, name) is original, f"{module.__name__}.{name} is still patched"
    if out is not None:
        assert "update_conv_state" not in out.full_cache.__dict__


@pytest.mark.parametrize("family", list(HYBRIDS))
def test_per_position_rollback_re_feeds_nothing_and_stays_lossless(family):
    model = HYBRIDS[family]()
    draft = hs.Draft.attention_off()
    partial = 0
    for k in (1, 2, 5, 8):
        ids = prompt(k)
        out = hs.speculative_generate(model, ids, draft=draft, k=k, max_new_tokens=24)
        assert torch.equal(out.tokens, hs.greedy_generate(model, ids, max_new_tokens=24))
        s = out.stats
        assert s.rollback_method == "per-position states"
        assert s.rollback_forwards == 0 and s.rollback_tokens == 0
        assert s.full_model_tokens == ids.numel() + s.verify_tokens
        partial += sum(0 < a < d for a, d in zip(s.accepted, s.drafted))
        rescanned = sum(a + 1 for a, d in zip(s.accepted, s.drafted) if a < d)
        # Mamba-2 blocks run token by token on the CPU and keep every state: nothing to re-scan
        assert s.rollback_scan_tokens == (0 if family == "falcon_h1" else rescanned)
        assert_unpatched(out)
    assert partial, "no mid-block rejection: the per-position rollback went untested"


@pytest.mark.parametrize("family", list(HYBRIDS))
def test_unknown_scans_fall_back_to_snapshot_and_re_feed(family, monkeypatch):
    monkeypatch.setattr(hs, "_SCANS", {})  # as for a recurrent mixer hybridspec does not know
    model = HYBRIDS[family]()
    for k in (2, 6):
        ids = prompt(10 + k)
        out = hs.speculative_generate(model, ids, draft=hs.Draft.attention_off(), k=k, max_new_tokens=20)
        assert torch.equal(out.tokens, hs.greedy_generate(model, ids, max_new_tokens=20))
        assert out.stats.rollback_method == "snapshot + re-feed"
        assert out.stats.rollback_forwards > 0 and out.stats.rollback_scan_tokens == 0


def test_transformers_only_crop():
    model = tm.scale_attention(tm.qwen2(23, layers=4, init=0.3), 0.3)
    out = hs.speculative_generate(model, prompt(3), draft=hs.Draft.layer_skip(), k=4, max_new_tokens=16)
    assert out.stats.rollback_method == "crop" and out.stats.rollback_forwards == 0


def _spy(monkeypatch, module, name, seen):
    original = getattr(module, name)

    @functools.wraps(original)
    def spy(*args, **kwargs):
        tokens = args[0] if args else kwargs["query"]
        seen.append((name, tokens.shape[1], kwargs.get("chunk_size")))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return spy


def test_short_blocks_skip_the_padded_chunk(monkeypatch):
    """The prefills keep the model's chunked scans and chunk sizes. After them, on the CPU, Mamba-2
    blocks run token by token (no chunked scan at all), Gated DeltaNet blocks of up to 5 tokens run
    its recurrent form, and longer ones one chunk of their own length."""
    seen = []
    spy = _spy(monkeypatch, modeling_falcon_h1, "mamba2_chunk_scan", seen)
    falcon = HYBRIDS["falcon_h1"]()
    out = hs.speculative_generate(falcon, prompt(4, length=40), draft=hs.Draft.attention_off(), k=8,
                                  max_new_tokens=24)
    assert out.stats.rollback_method == "per-position states"
    layers = falcon.config.num_hidden_layers
    assert len(seen) == 2 * layers  # the full model's and the draft view's prefill, nothing after
    assert all(chunk == falcon.config.mamba_chunk_size for _, _, chunk in seen)
    assert modeling_falcon_h1.mamba2_chunk_scan is spy  # our patch is gone, the test's own is back

    seen.clear()
    _spy(monkeypatch, modeling_qwen3_5, "torch_chunk_gated_delta_rule", seen)
    _spy(monkeypatch, modeling_qwen3_5, "torch_recurrent_gated_delta_rule", seen)
    qwen = HYBRIDS["qwen3_5"]()
    ids = prompt(6, length=40)
    out = hs.speculative_generate(qwen, ids, draft=hs.Draft.layer_skip(), k=8, max_new_tokens=30)
    assert torch.equal(out.tokens, hs.greedy_generate(qwen, ids, max_new_tokens=30))
    chunked = [(length, chunk) for name, length, chunk in seen if name == "torch_chunk_gated_delta_rule"]
    recurrent = [length for name, length, _ in seen if name == "torch_recurrent_gated_delta_rule"]
    assert chunked[0] == (40, None)  # the prefill: transformers' default chunk
    assert all(length > 5 and chunk == length for length, chunk in chunked[1:] if length != 40)
    assert recurrent and all(length <= 5 for length in recurrent) and any(length > 1 for length in recurrent)


def test_patches_are_undone_when_generation_raises(monkeypatch):
    model = HYBRIDS["qwen3_5"]()
    calls = {"n": 0}
    original = hs._greedy_accept

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(*args)

    monkeypatch.setattr(hs, "_greedy_accept", failing)
    with pytest.raises(RuntimeError, match="boom"):
        hs.speculative_generate(model, prompt(5), draft=hs.Draft.attention_off(), k=3, max_new_tokens=30)
    assert_unpatched()
