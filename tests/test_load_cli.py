"""Loading real checkpoints from a folder (the hub layout), device_map pass-through, and the CLI."""
import subprocess
import sys

import pytest
import torch

import hybridspec_core as hs
from conftest import ROOT


def test_load_from_a_local_folder_round_trips(saved_model):
    model, tokenizer = hs.load(saved_model)
    assert hs.anatomy(model).family == "sequential" and model.dtype == torch.float32
    ids = tokenizer("abcdefg", return_tensors="pt").input_ids
    out = hs.speculative_generate(model, ids, draft=hs.Draft.attention_off(), k=3, max_new_tokens=12)
    assert torch.equal(out.tokens, hs.greedy_generate(model, ids, max_new_tokens=12))


def test_load_passes_device_map_through(saved_model, monkeypatch):
    from transformers import AutoModelForCausalLM
    seen = {}
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = hs.load(saved_model, device_map="auto")
    assert seen["device_map"] == "auto" and seen["use_safetensors"] is True and seen["trust_remote_code"] is False
    assert hs.anatomy(model).family == "sequential" and model.dtype == torch.float32


def test_cli_generates_and_checks_against_greedy(saved_model, capsys):
    code = hs.main(["generate", "--model", str(saved_model), "--prompt", "hello world", "--k", "3",
                    "--max-new-tokens", "10", "--check"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "alpha=" in printed and "tau=" in printed and "EQUAL" in printed
    assert hs.main(["anatomy", "--model", str(saved_model)]) == 0
    assert "linear_attention + mlp" in capsys.readouterr().out


def test_cli_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "hybridspec_core", "generate", "--help"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    for option in ("--model", "--prompt", "--k", "--draft", "--max-new-tokens", "--temperature", "--seed",
                   "--device", "--dtype", "--device-map", "--check"):
        assert option in result.stdout


def test_cli_reports_bad_input_clearly(saved_model):
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        hs.main(["generate", "--model", str(saved_model), "--prompt", "x", "--k", "0"])


def test_every_miniature_tokenizes_like_its_training_tokenizer():
    """transformers maps qwen2 checkpoints to Qwen2Tokenizer (another pre-tokenizer) unless told
    otherwise: every shipped miniature must load the exact tokenizer it was trained with."""
    from tokenizers import Tokenizer
    text = "The :mod:`importlib` module now supports   a class.\n\n    x = 1\n"
    for name in hs.shipped_miniatures():
        _, tokenizer = hs.load(name)
        trained = Tokenizer.from_file(str(hs.MINIATURES_DIR / name / "tokenizer.json"))
        assert tokenizer(text).input_ids == trained.encode(text).ids, name
