"""One byte-level BPE tokenizer for every miniature, trained on the train split.

Saved as a `PreTrainedTokenizerFast` folder, so `AutoTokenizer.from_pretrained(folder)` loads it like a
hub checkpoint. `<|endoftext|>` is bos, eos and the document separator (GPT-2 / Qwen style); `<|pad|>`
pads. Byte-level means no unknown token: any text encodes.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from training.corpus import WORK_DIR, read_split

VOCAB_SIZE = 4096
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]  # ids 0 and 1
TOKENIZER_DIR = WORK_DIR / "tokenizer"


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the BPE on texts (in the given order: the result is deterministic for a given input)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1_000_000,  # the models decide their own context; no truncation warnings
    )


def build_tokenizer(train_path: Path = WORK_DIR / "corpus" / "train.txt",
                    out_dir: Path = TOKENIZER_DIR, rebuild: bool = False) -> PreTrainedTokenizerFast:
    """Train on the train split and save; reuse the saved one unless rebuild (a checkpoint is only
    valid with the tokenizer it was trained with)."""
    out_dir = Path(out_dir)
    if (out_dir / "tokenizer.json").exists() and not rebuild:
        return PreTrainedTokenizerFast.from_pretrained(out_dir)
    texts = [doc.text for doc in read_split(train_path)]
    tokenizer = train_tokenizer(texts)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


if __name__ == "__main__":
    tok = build_tokenizer(rebuild=True)
    sample = "def read_split(path):\n    return [doc.text for doc in docs]"
    ids = tok(sample)["input_ids"]
    print(len(tok), "tokens;", len(sample), "chars ->", len(ids), "ids;", tok.decode(ids) == sample)
