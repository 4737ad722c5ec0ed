"""The training pipeline: the corpus split is deterministic and by document, a toy model learns,
and a run resumes exactly where it stopped. Seconds on a CPU; no Debian package, no shipped weights."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from training import corpus
from training.configs import Miniature, Schedule
from training.tokenizer import train_tokenizer
from training.train import batch_for_step, learning_rate, train

TOY_TEXT = (
    "The os module provides a portable way of using operating system dependent functionality. "
    "If you just want to read or write a file see open(), if you want to manipulate paths, see "
    "the os.path module. Functions in the os module accept bytes or str paths.\n\n"
)


def fake_docs_tree(root, n=40):
    """A tiny stand-in for /usr/share/doc/python3.X/html/_sources."""
    for i in range(n):
        folder = root / ("library" if i % 2 else "howto")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"doc{i:02d}.rst.txt").write_text(f"Document {i}\n{'=' * 12}\n\n" + TOY_TEXT * (1 + i % 3))
    return root


def test_split_is_deterministic_and_by_document(tmp_path):
    root = fake_docs_tree(tmp_path / "python3.11" / "html" / "_sources")
    assert corpus.find_sources_root(str(tmp_path / "python3*" / "html" / "_sources")) == root.resolve()
    docs = corpus.load_documents(root)
    sizes = dict(test_bytes=2_000, validation_bytes=2_000)
    first = corpus.split_documents(docs, **sizes)
    # Same input in another order: same split.
    second = corpus.split_documents(list(reversed(docs)), **sizes)
    assert {k: [d.name for d in v] for k, v in first.items()} == {k: [d.name for d in v] for k, v in second.items()}
    names = {split: {d.name for d in split_docs} for split, split_docs in first.items()}
    assert names["test"] and names["validation"] and names["train"]
    # Every document lands whole in exactly one split.
    assert names["train"].isdisjoint(names["test"]) and names["train"].isdisjoint(names["validation"])
    assert names["test"].isdisjoint(names["validation"])
    assert sum(len(v) for v in names.values()) == len(docs)
    # The deal depends on the paths, not on the text: edited documents stay where they were.
    edited = [corpus.Document(d.name, d.text.upper()) for d in docs]
    third = corpus.split_documents(edited, **sizes)
    assert {k: [d.name for d in v] for k, v in third.items()} == {k: [d.name for d in v] for k, v in first.items()}


def test_split_files_round_trip_and_prompts(tmp_path):
    root = fake_docs_tree(tmp_path / "src")
    docs = corpus.load_documents(root)
    corpus.write_split(tmp_path / "split.txt", docs)
    assert corpus.read_split(tmp_path / "split.txt") == [
        corpus.Document(d.name, d.text.rstrip("\n") + "\n") for d in docs]
    prompts = corpus.build_prompts(docs, count=5)
    assert len(prompts) == 5 and all(len(p["text"]) > corpus.PROMPT_MIN_CHARS for p in prompts)


def toy_miniature():
    return Miniature("toy", "qwen2.5", "s", hidden=32, layers=2, draft="layer_skip")


def toy_data(vocab=256):
    tokenizer = train_tokenizer([TOY_TEXT * 30], vocab_size=vocab)
    ids = tokenizer(TOY_TEXT * 30)["input_ids"]
    return tokenizer, np.asarray(ids, dtype=np.uint16)


def toy_setup(monkeypatch):
    """A 2-layer Qwen2 with a 256-token vocabulary and 64-token windows."""
    import training.configs as configs
    monkeypatch.setattr(configs, "VOCAB_SIZE", 256)
    tokenizer, stream = toy_data(256)
    schedule = Schedule(tokens=16 * 64 * 30, seq_len=64, batch_size=16, lr=1e-2, warmup_tokens=16 * 64 * 3)
    return tokenizer, stream, schedule


def test_toy_model_loss_falls(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    _, stream, schedule = toy_setup(monkeypatch)
    rows = []
    result = train(toy_miniature(), schedule, stream, tmp_path / "work", log_path=tmp_path / "log.csv",
                   measure=lambda model: rows.append(1) or {}, eval_every=10, progress=False)
    assert result.finished and result.state.step == 30
    log = np.genfromtxt(tmp_path / "log.csv", delimiter=",", names=True, dtype=None, encoding=None)
    losses = [float(x) for x in log["train_loss"][1:]]
    assert losses[-1] < losses[0] - 1.0, losses  # learns the repeated paragraph
    assert len(rows) == 1 + 3  # the untrained row, then every 10 steps


def test_resume_continues_exactly(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    _, stream, schedule = toy_setup(monkeypatch)
    schedule = dataclasses.replace(schedule, tokens=16 * 64 * 6)
    straight = train(toy_miniature(), schedule, stream, tmp_path / "a", progress=False)
    train(toy_miniature(), schedule, stream, tmp_path / "b", progress=False, max_steps=3)
    resumed = train(toy_miniature(), schedule, stream, tmp_path / "b", progress=False)
    assert resumed.state.step == straight.state.step == 6
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_schedule_and_batches_are_pure_functions():
    schedule = Schedule(tokens=1000, seq_len=8, batch_size=2, lr=1.0, warmup_tokens=100)
    assert learning_rate(schedule, 50) == pytest.approx(0.51)
    assert learning_rate(schedule, 500) == 1.0
    assert learning_rate(schedule, 1000) == pytest.approx(0.1)
    stream = np.arange(100, dtype=np.uint16)
    assert torch.equal(batch_for_step(stream, 7, schedule), batch_for_step(stream, 7, schedule))
    assert not torch.equal(batch_for_step(stream, 7, schedule), batch_for_step(stream, 8, schedule))


def test_training_log_metrics_run_through_the_core(monkeypatch):
    """The training log's metrics on a tiny untrained Falcon-H1: every column, sane ranges."""
    pytest.importorskip("hybridspec_core")
    from training.metrics import build_eval_set, measure
    torch.set_num_threads(1)
    _, stream, _ = toy_setup(monkeypatch)
    miniature = Miniature("toy-falcon", "falcon-h1", "s", hidden=64, layers=2, draft="attention_off")
    torch.manual_seed(0)
    model = miniature.model_class()(miniature.config())
    prompts = [list(map(int, stream[i: i + 24])) for i in range(0, 400, 100)]
    eval_set = build_eval_set(stream, prompts, seq_len=64, vocab_size=256, n_windows=2, n_prompts=2, n_copy=2)
    row = measure(model, eval_set, "attention_off", seq_len=64)
    assert set(row) == {"val_loss", "val_ppl", "draft_ppl", "draft_ppl_ratio", "alpha_k2", "alpha_k4",
                        "copy_loss_full", "copy_loss_draft"}
    assert 0.0 <= row["alpha_k2"] <= 1.0 and 0.0 <= row["alpha_k4"] <= 1.0
    # Untrained: about uniform over 256 tokens everywhere.
    assert abs(row["copy_loss_full"] - np.log(256)) < 1.0 and row["draft_ppl_ratio"] > 0
    assert model.training  # measure() restores the training mode
