import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# HYBRIDSPEC_TEST_THREADS=1 keeps a local run from fighting a background job for the 2 cores.
torch.set_num_threads(int(os.environ.get("HYBRIDSPEC_TEST_THREADS", min(2, torch.get_num_threads()))))


def save_with_tokenizer(model, folder: Path) -> Path:
    """Save a tiny model the way a hub checkpoint looks: safetensors + config + a fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_size = model.config.vocab_size
    vocab = {chr(33 + i): i for i in range(vocab_size - 1)}
    vocab["<unk>"] = vocab_size - 1
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def saved_model(tmp_path):
    import tiny_models as tm
    return save_with_tokenizer(tm.scale_attention(tm.qwen3_5(3, layers=4, init=0.3), 0.1), tmp_path / "tiny-qwen3.5")
