"""Quality gates for the shipped miniatures: they load through hs.load, beat a unigram model by
at least 2x in perplexity on the held-out text, have the expected family, and decode losslessly."""
import math
from collections import Counter

import pytest
import torch

import hybridspec_core as hs

EXPECTED_FAMILY = {"falcon-h1-s": "parallel", "falcon-h1-m": "parallel", "qwen3.5-s": "sequential",
                   "qwen2.5-s": "transformer"}
SHIPPED = [name for name in hs.shipped_miniatures() if name in EXPECTED_FAMILY]
GATE_TOKENS = 20_000  # of the held-out test split, the same text for the model and the unigram


def test_the_zoo_is_shipped_and_small():
    assert "falcon-h1-s" in SHIPPED
    total = sum(f.stat().st_size for f in hs.MINIATURES_DIR.glob("*/*.safetensors"))
    assert total < 40e6, f"the zoo's weights are {total / 1e6:.1f} MB (budget 40 MB)"


def test_the_zoo_is_finished_and_comparable():
    """Same-size models saw the same tokens, sequence length and schedule, so that their differences
    come from architecture; the scale pair (falcon-h1-s / -m) saw the same tokens; and each shipped
    model is the finished run of the schedule `make miniatures` plans now (training/configs.py)."""
    import dataclasses
    import json

    from training.configs import SCHEDULES, ZOO

    cards = {name: json.loads((hs.MINIATURES_DIR / name / "evaluation.json").read_text()) for name in SHIPPED}
    for name, card in cards.items():
        assert card["finished"], f"{name} is a partial run: rerun `make miniatures MODEL={name}`"
        planned = SCHEDULES[ZOO[name].size_class]
        assert card["schedule"] == dataclasses.asdict(planned), name
        assert card["tokens"] >= planned.tokens, name
    small = [card["schedule"] for name, card in cards.items() if ZOO[name].size_class == "s"]
    assert len(small) == 3 and all(s == small[0] for s in small)
    if "falcon-h1-m" in cards:
        assert cards["falcon-h1-m"]["tokens"] == cards["falcon-h1-s"]["tokens"]
        assert cards["falcon-h1-m"]["parameters"] >= 2 * cards["falcon-h1-s"]["parameters"]


def unigram_perplexity(sequences) -> float:
    """A unigram model fitted on the evaluation text itself (the best any unigram model can do there)."""
    counts = Counter(token for sequence in sequences for token in sequence[1:].tolist())
    total = sum(counts.values())
    return math.exp(-sum(n * math.log(n / total) for n in counts.values()) / total)


@pytest.mark.parametrize("name", SHIPPED)
def test_miniature_quality_gates(name):
    model, tokenizer = hs.load(name)
    assert hs.anatomy(model).family == EXPECTED_FAMILY[name]
    sequences = hs.evaluation_sequences(tokenizer, max_tokens=GATE_TOKENS)
    ours, unigram = hs.perplexity(model, sequences), unigram_perplexity(sequences)
    assert ours <= unigram / 2, f"{name}: perplexity {ours:.1f} vs unigram {unigram:.1f}"
    draft = hs.Draft.layer_skip() if EXPECTED_FAMILY[name] == "transformer" else hs.Draft.attention_off()
    for prompt in hs.load_prompts(tokenizer, n=3, max_tokens=96):
        for k in (2, 4):
            out = hs.speculative_generate(model, prompt, draft=draft, k=k, max_new_tokens=24)
            assert torch.equal(out.tokens, hs.greedy_generate(model, prompt, max_new_tokens=24))
