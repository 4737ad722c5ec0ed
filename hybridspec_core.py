"""hybridspec_core: component-aware self-speculative decoding for hybrid language models.

A hybrid LM mixes attention with SSM or linear-attention components. Mask the attention and what is
left is a draft model inside the same weights: draft k tokens with it, verify them with the full
model in ONE cached forward pass, keep the longest agreeing prefix, roll every cache back exactly.

Read top to bottom:
  1. loading            load(), shipped miniatures, clear errors for bad sources
  2. anatomy            which components each decoder layer has -> family (parallel / sequential / transformer)
  3. draft views        Draft.attention_off / layer_skip / early_exit, applied by instance-level forward overrides
  4. caches             snapshot / restore of KV, conv and recurrent states
  5. decoding           greedy_generate (the baseline) and speculative_generate (lossless greedy, exact sampling)
  6. measurements       the paper's one-round protocol with bootstrap CIs, perplexity, draft/full divergence
  7. the book's data    shipped prompts and evaluation text, the paper's reference tables
  8. command line       python -m hybridspec_core generate ...

Everything is plain PyTorch on top of transformers' own model classes (>= 5.23): no model code is
copied, no remote code is trusted, weights load from safetensors only.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "load", "shipped_miniatures", "anatomy", "Anatomy", "LayerAnatomy", "Draft", "DraftPlan", "draft_view",
    "new_cache", "snapshot_cache", "restore_cache", "greedy_generate", "speculative_generate", "SpecOutput",
    "SpecStats", "speculative_accept", "acceptance_one_round", "paper_protocol", "bootstrap_ci", "perplexity",
    "divergence", "load_prompts", "evaluation_sequences", "paper_reference", "UnsupportedModelError",
    "ModelNotAvailableError",
]

REPO_ROOT = Path(__file__).resolve().parent
MINIATURES_DIR = REPO_ROOT / "miniatures"
FAMILIES = ("parallel", "sequential", "transformer")
SUPPORTED_FAMILIES = (
    "parallel hybrids (attention and an SSM side by side in a layer: Falcon-H1), "
    "sequential hybrids (linear-attention layers interleaved with attention layers: Qwen3.5, Qwen3-Next), "
    "and plain decoder-only transformers as controls (Qwen2, Llama, ...)"
)


class UnsupportedModelError(ValueError):
    """The model's structure is not one hybridspec knows how to draft from."""


class ModelNotAvailableError(OSError):
    """The weights cannot be found locally and cannot be downloaded."""


# ------------------------------------------------------------------------------------------------
# 1. Loading
# ------------------------------------------------------------------------------------------------

def shipped_miniatures() -> list[str]:
    """Names of the miniature hybrids shipped in the repo (``miniatures/NAME/config.json``)."""
    if not MINIATURES_DIR.is_dir():
        return []
    return sorted(p.name for p in MINIATURES_DIR.iterdir() if (p / "config.json").is_file())


def _hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower()
    if flag not in ("", "0", "false", "no", "off"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return False


def _resolve_source(name_or_path: str | os.PathLike) -> Path | str:
    """A local folder, a shipped miniature's folder, or (returned as a string) a hub id."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{text!r} is a file; pass the folder that holds config.json and *.safetensors")
    miniature = MINIATURES_DIR / text
    if (miniature / "config.json").is_file():
        return miniature
    shipped = ", ".join(shipped_miniatures()) or "(none shipped yet: run `make miniatures`)"
    looks_like_hub_id = re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", text) is not None
    if not looks_like_hub_id:
        raise ModelNotAvailableError(
            f"{text!r} is neither a local folder, nor a shipped miniature, nor a hub id of the form "
            f"'organisation/name'. Shipped miniatures: {shipped}."
        )
    return text


def _load_tokenizer(folder: Path):
    """The tokenizer a checkpoint folder ships. transformers picks a tokenizer class by the model's type
    (qwen2 -> Qwen2Tokenizer, with its own pre-tokenizer) even when tokenizer_config.json names the
    generic backend, which silently changes the token ids of a tokenizer trained elsewhere (the
    miniatures'). A folder whose config names the generic backend gets exactly its tokenizer.json."""
    import json
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    config_file = folder / "tokenizer_config.json"
    declared = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if declared in ("TokenizersBackend", "PreTrainedTokenizerFast") and (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def load(name_or_path: str | os.PathLike, device: str | torch.device | None = None, dtype=None,
         device_map=None, trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` from a shipped miniature name, a local folder or a hub id.

    Weights load from safetensors only and remote code is not trusted unless asked for. ``device_map``
    goes straight to transformers/accelerate (e.g. ``"auto"`` spreads a large model over several
    GPUs); otherwise the model is moved to ``device``. ``dtype`` defaults to float32 on the CPU (exact
    comparisons) and to the checkpoint's own dtype on accelerators.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _resolve_source(name_or_path)
    on_cpu = (not torch.cuda.is_available()) if device is None else torch.device(device).type == "cpu"
    if dtype is None:
        dtype = torch.float32 if on_cpu else "auto"
    elif isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    if device_map is not None:
        kwargs["device_map"] = device_map

    if isinstance(source, Path):
        if not any(source.glob("*.safetensors")):
            raise ModelNotAvailableError(
                f"{source} has no *.safetensors weights. hybridspec loads safetensors only: convert a "
                f"PyTorch .bin checkpoint with `model.save_pretrained(folder, safe_serialization=True)`, "
                f"or retrain a miniature with `make miniatures`."
            )
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, **kwargs)
        tokenizer = _load_tokenizer(source)
    else:
        offline = _hub_offline()
        try:
            model = AutoModelForCausalLM.from_pretrained(source, local_files_only=offline, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        except (OSError, ValueError, ConnectionError) as error:
            why = "the hub is offline here (HF_HUB_OFFLINE=1)" if offline else "it could not be downloaded"
            raise ModelNotAvailableError(
                f"{source!r} looks like a hub id, but it is not in the local cache and {why}. Pass a local "
                f"path to a downloaded checkpoint, or use a shipped miniature: "
                f"{', '.join(shipped_miniatures()) or '(none shipped yet)'}. ({type(error).__name__}: {error})"
            ) from error
    if device_map is None and device is not None:
        model.to(device)
    model.eval()
    anatomy(model)  # fail now, not halfway through a notebook, if the architecture is unsupported
    return model, tokenizer


# ------------------------------------------------------------------------------------------------
# 2. Architecture anatomy
# ------------------------------------------------------------------------------------------------

# Attribute names of a decoder layer's sub-modules in transformers, and the component each one is.
_COMPONENT_ATTRIBUTES = {
    "self_attn": "attention",
    "mamba": "ssm",
    "linear_attn": "linear_attention",
    "mlp": "mlp",
    "feed_forward": "mlp",
}
_TOKEN_MIXERS = ("attention", "ssm", "linear_attention")
_ALTERNATIVES = ("ssm", "linear_attention")


@dataclasses.dataclass(frozen=True)
class LayerAnatomy:
    index: int
    components: tuple[str, ...]

    @property
    def has_attention(self) -> bool:
        return "attention" in self.components

    @property
    def has_alternative(self) -> bool:
        return any(c in _ALTERNATIVES for c in self.components)


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """What a model is made of: its family and, per decoder layer, its components."""

    family: str
    model_class: str
    model_type: str
    layers: tuple[LayerAnatomy, ...]
    layer_returns_tuple: bool  # Falcon-H1's layers return (hidden,), Qwen's a bare tensor
    max_positions: int | None

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def attention_layers(self) -> list[int]:
        return [layer.index for layer in self.layers if layer.has_attention]

    @property
    def alternative_layers(self) -> list[int]:
        return [layer.index for layer in self.layers if layer.has_alternative]

    def describe(self) -> str:
        rows = [f"{self.model_class} ({self.model_type}): {self.family}, {self.n_layers} layers"]
        rows += [f"  layer {layer.index:>3}: {' + '.join(layer.components)}" for layer in self.layers]
        return "\n".join(rows)


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "lm_head"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a decoder-only causal LM with `model.layers` and `lm_head`. "
            f"hybridspec supports {SUPPORTED_FAMILIES}."
        )
    return layers


def anatomy(model: nn.Module) -> Anatomy:
    """Detect the family from the model's structure (not its name), so any size of a family works."""
    layers = _decoder_layers(model)
    described = []
    for index, layer in enumerate(layers):
        components = tuple(
            component for attribute, component in _COMPONENT_ATTRIBUTES.items()
            if isinstance(getattr(layer, attribute, None), nn.Module)
        )
        if not any(c in _TOKEN_MIXERS for c in components):
            raise UnsupportedModelError(
                f"{type(model).__name__}: decoder layer {index} ({type(layer).__name__}) has no token mixer "
                f"hybridspec recognises (self_attn / mamba / linear_attn). hybridspec supports {SUPPORTED_FAMILIES}."
            )
        described.append(LayerAnatomy(index, components))
    any_attention = any(layer.has_attention for layer in described)
    any_alternative = any(layer.has_alternative for layer in described)
    if not any_attention:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no attention layers, so there is nothing to mask. hybridspec "
            f"supports {SUPPORTED_FAMILIES}."
        )
    if any(layer.has_attention and layer.has_alternative for layer in described):
        family = "parallel"
    elif any_alternative:
        family = "sequential"
    else:
        family = "transformer"
    annotation = str(getattr(type(layers[0]).forward, "__annotations__", {}).get("return", ""))
    config = model.config
    return Anatomy(
        family=family,
        model_class=type(model).__name__,
        model_type=str(getattr(config, "model_type", "?")),
        layers=tuple(described),
        layer_returns_tuple=annotation.startswith("tuple"),
        max_positions=getattr(config, "max_position_embeddings", None),
    )


# ------------------------------------------------------------------------------------------------
# 3. Draft views: the draft model is the same weights with components removed
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DraftPlan:
    """A draft resolved against one model: which layers are skipped, where attention is zeroed."""

    skip_layers: frozenset[int]
    attention_off_layers: frozenset[int]
    attention_layers: tuple[int, ...]  # the model's attention layers (for the mask choice below)
    name: str
    layer_returns_tuple: bool = False  # how a skipped layer must hand its input back

    @property
    def computed_attention_layers(self) -> list[int]:
        return [i for i in self.attention_layers if i not in self.skip_layers and i not in self.attention_off_layers]

    @property
    def mask_layer(self) -> int | None:
        """transformers sizes the causal mask from the FIRST attention layer's KV cache. In a draft that
        skips that layer its KV stays empty, so a partial mask must size the mask from a layer the draft
        really computes (None: the default is right, or no attention runs at all)."""
        computed = self.computed_attention_layers
        if not computed or not self.attention_layers or computed[0] == self.attention_layers[0]:
            return None
        return computed[0]


@dataclasses.dataclass(frozen=True)
class Draft:
    """A recipe for a draft view. Combine recipes with ``+``: ``Draft.attention_off() + Draft.early_exit(4)``."""

    ops: tuple[tuple, ...]

    @staticmethod
    def attention_off(layers: Iterable[int] | None = None, keep_mlp: bool = False) -> "Draft":
        """Component-aware draft: remove attention (all attention layers if ``layers`` is None).

        Parallel hybrids: the attention branch returns zeros without being computed; the SSM branch and
        the MLP still run. Sequential hybrids: full-attention layers become the identity, or with
        ``keep_mlp=True`` only their attention sublayer is removed and their MLP still runs."""
        return Draft((("attention_off", None if layers is None else tuple(int(i) for i in layers), bool(keep_mlp)),))

    @staticmethod
    def layer_skip(layers: Iterable[int] | None = None, fraction: float = 0.33) -> "Draft":
        """Generic LayerSkip (the paper's, untrained): the given layers, or the middle ``fraction`` of
        them, become the identity. 0.33 of 24 layers skips layers 9-15 (1-based), as in the paper."""
        return Draft((("layer_skip", None if layers is None else tuple(int(i) for i in layers), float(fraction)),))

    @staticmethod
    def early_exit(n_layers: int) -> "Draft":
        """Run the first ``n_layers`` layers, then the final norm and lm_head."""
        return Draft((("early_exit", int(n_layers)),))

    def __add__(self, other: "Draft") -> "Draft":
        if not isinstance(other, Draft):
            return NotImplemented
        return Draft(self.ops + other.ops)

    @property
    def name(self) -> str:
        parts = []
        for op in self.ops:
            if op[0] == "attention_off":
                label = "attention_off" + ("(keep_mlp)" if op[2] else "")
                parts.append(label if op[1] is None else f"{label}[{_ranges(op[1])}]")
            elif op[0] == "layer_skip":
                parts.append(f"layer_skip({op[2]:g})" if op[1] is None else f"layer_skip[{_ranges(op[1])}]")
            else:
                parts.append(f"early_exit({op[1]})")
        return "+".join(parts) or "full"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, spec: str) -> "Draft":
        """Parse the CLI form: ``attention_off``, ``attention_off:keep_mlp``, ``attention_off:0,4,8``,
        ``layer_skip``, ``layer_skip:0.5``, ``layer_skip:8-14``, ``early_exit:4``, joined with ``+``."""
        draft = Draft(())
        for part in spec.split("+"):
            kind, _, arg = part.strip().partition(":")
            if kind == "attention_off":
                keep_mlp = arg == "keep_mlp"
                draft = draft + cls.attention_off(None if (not arg or keep_mlp) else _parse_layers(arg), keep_mlp)
            elif kind == "layer_skip":
                if not arg:
                    draft = draft + cls.layer_skip()
                elif re.fullmatch(r"0?\.\d+", arg):
                    draft = draft + cls.layer_skip(fraction=float(arg))
                else:
                    draft = draft + cls.layer_skip(layers=_parse_layers(arg))
            elif kind == "early_exit" and arg.isdigit():
                draft = draft + cls.early_exit(int(arg))
            else:
                raise ValueError(
                    f"unknown draft {part!r}: use attention_off[:keep_mlp|:LAYERS], layer_skip[:FRACTION|:LAYERS] "
                    f"or early_exit:N, joined with '+' (LAYERS like 0,4,8 or 8-14)"
                )
        return draft

    def plan(self, anat: Anatomy) -> DraftPlan:
        """Resolve against a model; every check happens here, before any work."""
        n = anat.n_layers
        skip: set[int] = set()
        attention_off: set[int] = set()
        for op in self.ops:
            if op[0] == "attention_off":
                if anat.family == "transformer":
                    raise UnsupportedModelError(
                        f"attention_off needs an alternative component (SSM or linear attention) to draft with, "
                        f"but {anat.model_class} is a plain transformer: use Draft.layer_skip() or Draft.early_exit(n)."
                    )
                targets = anat.attention_layers if op[1] is None else _checked_layers(op[1], n, anat.model_class)
                for i in targets:
                    layer = anat.layers[i]
                    if not layer.has_attention:
                        raise ValueError(f"attention_off: layer {i} of {anat.model_class} has no attention "
                                         f"(attention layers: {_ranges(anat.attention_layers)})")
                    if layer.has_alternative or op[2]:
                        attention_off.add(i)
                    else:
                        skip.add(i)
            elif op[0] == "layer_skip":
                if op[1] is not None:
                    skip.update(_checked_layers(op[1], n, anat.model_class))
                else:
                    fraction = op[2]
                    count = int(fraction * n)
                    if not 0.0 < fraction < 1.0 or count < 1:
                        raise ValueError(f"layer_skip fraction {fraction} skips no layer of {n}: use a fraction in "
                                         f"(0, 1) with fraction * {n} >= 1, or name the layers")
                    start = (n - count) // 2
                    skip.update(range(start, start + count))
            else:
                keep = op[1]
                if not 1 <= keep < n:
                    raise ValueError(f"early_exit({keep}): {anat.model_class} has {n} layers; keep between 1 and {n - 1}")
                skip.update(range(keep, n))
        attention_off -= skip
        return DraftPlan(frozenset(skip), frozenset(attention_off), tuple(anat.attention_layers), self.name,
                         anat.layer_returns_tuple)


def _checked_layers(layers: Sequence[int], n: int, model_class: str) -> list[int]:
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"the draft names layers {bad} but {model_class} has layers 0..{n - 1}")
    return sorted(set(layers))


def _parse_layers(text: str) -> list[int]:
    layers: list[int] = []
    for piece in text.split(","):
        low, _, high = piece.partition("-")
        layers.extend(range(int(low), int(high or low) + 1))
    return layers


def _ranges(indices: Iterable[int]) -> str:
    indices = sorted(indices)
    spans, start = [], None
    for position, value in enumerate(indices):
        if start is None:
            start = value
        if position + 1 == len(indices) or indices[position + 1] != value + 1:
            spans.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ",".join(spans)


def _hidden_from(args, kwargs) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


@contextlib.contextmanager
def draft_view(model: nn.Module, draft: Draft | DraftPlan):
    """Inside this block ``model`` IS the draft. Removed components are never computed: an
    instance-level ``forward`` override replaces them (a hook that zeroes outputs would still pay for
    attention and write draft tokens into the KV cache). Leaving the block restores the model."""
    plan = draft if isinstance(draft, DraftPlan) else draft.plan(anatomy(model))
    returns_tuple = plan.layer_returns_tuple
    layers = _decoder_layers(model)

    def skipped_layer(*args, **kwargs):
        hidden = _hidden_from(args, kwargs)
        return (hidden,) if returns_tuple else hidden

    def removed_attention(*args, **kwargs):
        return torch.zeros_like(_hidden_from(args, kwargs)), None

    patched = []
    try:
        for modules, replacement in (([layers[i] for i in plan.skip_layers], skipped_layer),
                                     ([layers[i].self_attn for i in plan.attention_off_layers], removed_attention)):
            for module in modules:
                if "forward" in module.__dict__:
                    raise RuntimeError("draft_view blocks cannot be nested on the same model")
                module.forward = replacement
                patched.append(module)
        yield plan
    finally:
        for module in patched:
            del module.forward


# ------------------------------------------------------------------------------------------------
# 4. Caches: one DynamicCache per view, snapshots of the state tensors, exact rollback
# ------------------------------------------------------------------------------------------------

def new_cache(model: nn.Module):
    """transformers >= 5.23 builds every hybrid's cache from ``config.layer_types``."""
    from transformers import DynamicCache
    return DynamicCache(config=model.config)


@dataclasses.dataclass
class CacheSnapshot:
    kv_lengths: list[int]
    states: list[tuple[dict, int, torch.Tensor]]  # (the layer's state dict, state index, saved copy)


def _kv_length(layer) -> int:
    keys = getattr(layer, "keys", None)
    return 0 if keys is None or keys.numel() == 0 else keys.shape[-2]


def _has_recurrent_state(cache) -> bool:
    return any(t is not None for layer in cache.layers for t in getattr(layer, "recurrent_states", {}).values())


def snapshot_cache(cache) -> CacheSnapshot:
    """KV tensors only grow by concatenation, so a length is enough to undo them. Conv and recurrent
    states are updated IN PLACE by single-token steps, so they are cloned (a few tensors per layer:
    far cheaper than ``copy.deepcopy`` of the cache)."""
    kv_lengths, states = [], []
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False):
            raise UnsupportedModelError("sliding-window KV layers cannot be rolled back by cropping; "
                                        "hybridspec supports full-attention KV caches")
        kv_lengths.append(_kv_length(layer))
        for store in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None)):
            for index, tensor in (store or {}).items():
                if tensor is not None:
                    states.append((store, index, tensor.clone()))
    return CacheSnapshot(kv_lengths, states)


def restore_cache(cache, snapshot: CacheSnapshot, keep_tokens: int = 0) -> None:
    """Put the cache back to ``snapshot``, keeping ``keep_tokens`` more KV positions (only valid for a
    cache with no recurrent state, where cropping alone is exact)."""
    for layer, length in zip(cache.layers, snapshot.kv_lengths):
        target = length + keep_tokens
        if _kv_length(layer) > target:
            layer.keys = layer.keys[..., :target, :]
            layer.values = layer.values[..., :target, :]
    for store, index, saved in snapshot.states:
        store[index].copy_(saved)  # in place: transformers marks these addresses static


# ------------------------------------------------------------------------------------------------
# 5. Decoding
# ------------------------------------------------------------------------------------------------

def _forward(model, tokens: torch.Tensor, cache, start: int, last_only: bool = False,
             mask_layer: int | None = None) -> torch.Tensor:
    """One cached forward of ``tokens`` (1-D) at positions ``start...``; float32 logits (T or 1, V).
    Positions are always explicit: a draft cache with skipped attention layers reports length 0."""
    length = tokens.numel()
    positions = torch.arange(start, start + length, device=tokens.device).unsqueeze(0)
    kwargs = dict(input_ids=tokens.unsqueeze(0), position_ids=positions, past_key_values=cache, use_cache=True)
    if last_only:
        kwargs["logits_to_keep"] = 1
    if mask_layer is not None:
        from transformers.masking_utils import create_causal_mask
        shape_only = torch.empty((1, length, 1), dtype=model.dtype, device=tokens.device)
        mask = create_causal_mask(config=model.config, inputs_embeds=shape_only, attention_mask=None,
                                  past_key_values=cache, position_ids=positions, layer_idx=mask_layer)
        kwargs["attention_mask"] = {"full_attention": mask, "sliding_attention": mask, "linear_attention": None}
    return model(**kwargs).logits[0].float()


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _eos_set(model, eos_token_id) -> set[int]:
    if eos_token_id is None:
        generation_config = getattr(model, "generation_config", None)
        eos_token_id = getattr(generation_config, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = getattr(model.config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    return {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(e) for e in eos_token_id}


def _prepare_prompt(model, input_ids, max_new_tokens: int, anat: Anatomy) -> torch.Tensor:
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"batch size {ids.shape[0]}: hybridspec decodes one sequence at a time (batch size 1)")
        ids = ids[0]
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError("empty prompt: pass at least one token id (a 1-D LongTensor or shape (1, T))")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be integer token ids, got {ids.dtype}")
    vocab = model.config.vocab_size
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab}); got [{int(ids.min())}, {int(ids.max())}]")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    limit = anat.max_positions
    if limit is not None and ids.numel() + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({ids.numel()} tokens) + max_new_tokens ({max_new_tokens}) = {ids.numel() + max_new_tokens} "
            f"exceeds the model's context of {limit} positions: shorten the prompt (keep its last "
            f"{limit - max_new_tokens} tokens) or ask for fewer new tokens"
        )
    return ids.to(device=_model_device(model), dtype=torch.long)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def greedy_generate(model, input_ids, max_new_tokens: int = 64, eos_token_id=None) -> torch.Tensor:
    """The baseline: cached greedy decoding, one token per forward. Returns the new tokens (1-D)."""
    ids = _prepare_prompt(model, input_ids, max_new_tokens, anatomy(model))
    eos = _eos_set(model, eos_token_id)
    cache = new_cache(model)
    logits = _forward(model, ids, cache, 0, last_only=True)
    new_tokens: list[torch.Tensor] = []
    while True:
        token = logits[-1].argmax().view(1)
        new_tokens.append(token)
        if len(new_tokens) == max_new_tokens or int(token) in eos:
            break
        logits = _forward(model, token, cache, ids.numel() + len(new_tokens) - 1, last_only=True)
    return torch.cat(new_tokens)


@dataclasses.dataclass
class SpecStats:
    """What a speculative generation did. Counts are tokens and forward passes; times are seconds."""

    k: int
    prompt_tokens: int = 0
    new_tokens: int = 0
    accepted: list[int] = dataclasses.field(default_factory=list)  # drafts accepted at each step
    drafted: list[int] = dataclasses.field(default_factory=list)   # drafts proposed at each step (k, fewer at the end)
    prefill_tokens: int = 0          # full model, prompt
    draft_prefill_tokens: int = 0    # draft view, prompt
    draft_forwards: int = 0
    draft_tokens: int = 0
    verify_forwards: int = 0
    verify_tokens: int = 0
    rollback_forwards: int = 0       # re-feeds of accepted tokens after a restore (hybrids only)
    rollback_tokens: int = 0
    rollback_snapshots: int = 0      # state clones taken
    time_prefill: float = 0.0
    time_draft: float = 0.0
    time_verify: float = 0.0
    time_rollback: float = 0.0
    time_total: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.accepted)

    @property
    def alpha(self) -> float:
        """The paper's acceptance rate: mean over steps of accepted / k (steps that drafted a full k)."""
        full = [a / self.k for a, d in zip(self.accepted, self.drafted) if d == self.k]
        if full:
            return sum(full) / len(full)
        partial = [a / d for a, d in zip(self.accepted, self.drafted) if d > 0]
        return sum(partial) / len(partial) if partial else float("nan")

    @property
    def per_token_acceptance(self) -> float:
        """Accepted drafts / proposed drafts, over the whole generation."""
        drafted = sum(self.drafted)
        return sum(self.accepted) / drafted if drafted else float("nan")

    @property
    def tau(self) -> float:
        """New tokens per verification forward (the first token comes from the prefill)."""
        return (self.new_tokens - 1) / self.verify_forwards if self.verify_forwards else float("nan")

    @property
    def full_model_tokens(self) -> int:
        return self.prefill_tokens + self.verify_tokens + self.rollback_tokens

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.update(steps=self.steps, alpha=self.alpha, per_token_acceptance=self.per_token_acceptance,
                    tau=self.tau, full_model_tokens=self.full_model_tokens)
        return data

    def summary(self) -> str:
        return (f"k={self.k} steps={self.steps} new={self.new_tokens} alpha={self.alpha:.3f} "
                f"per-token={self.per_token_acceptance:.3f} tau={self.tau:.2f} "
                f"full-model tokens={self.full_model_tokens} (rollback {self.rollback_tokens}) "
                f"time draft/verify/rollback={self.time_draft:.3f}/{self.time_verify:.3f}/{self.time_rollback:.3f}s "
                f"total={self.time_total:.3f}s")


@dataclasses.dataclass
class SpecOutput:
    tokens: torch.Tensor  # 1-D LongTensor of the new tokens (prompt excluded)
    stats: SpecStats
    # The caches as generation left them, for inspection: the full cache holds prompt + tokens[:-1]
    # (tokens[-1] is not fed yet); the draft cache holds everything but ``draft_pending``.
    full_cache: object = dataclasses.field(default=None, repr=False)
    draft_cache: object = dataclasses.field(default=None, repr=False)
    draft_pending: torch.Tensor | None = dataclasses.field(default=None, repr=False)


def speculative_accept(target_probs: torch.Tensor, draft_probs: torch.Tensor, drafts: torch.Tensor,
                       generator: torch.Generator | None) -> tuple[int, torch.Tensor]:
    """Exact speculative sampling (Leviathan et al. 2023; Chen et al. 2023), vectorised.

    target_probs (n+1, V): the full model's distributions at the n drafts and one past them;
    draft_probs (n, V): the draft's; drafts (n,). Draft i is kept while u_i < p_i(d_i) / q_i(d_i); the
    first rejection is resampled from the normalised residual max(p - q, 0); if all n are kept, a
    bonus token comes from p_n. The output is then distributed exactly as the target's own samples."""
    n = drafts.numel()
    accepted = 0
    if n:
        rows = torch.arange(n, device=drafts.device)
        p_at_drafts = target_probs[rows, drafts]
        q_at_drafts = draft_probs[rows, drafts]
        uniforms = torch.rand(n, generator=generator, device=drafts.device)
        kept = (uniforms * q_at_drafts < p_at_drafts).int()
        accepted = int(kept.cumprod(0).sum())
    if accepted < n:
        residual = (target_probs[accepted] - draft_probs[accepted]).clamp_min(0)
        total = residual.sum()
        distribution = residual / total if total > 0 else target_probs[accepted]
    else:
        distribution = target_probs[n]
    return accepted, torch.multinomial(distribution, 1, generator=generator)


def _greedy_accept(target_logits: torch.Tensor, drafts: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Keep the drafts that equal the full model's argmax; the next token is the argmax after them."""
    predicted = target_logits.argmax(-1)
    n = drafts.numel()
    accepted = int((predicted[:n] == drafts).int().cumprod(0).sum()) if n else 0
    return accepted, predicted[accepted].view(1)


@torch.inference_mode()
def speculative_generate(model, input_ids, draft: Draft, k: int = 4, max_new_tokens: int = 64,
                         temperature: float = 0.0, seed: int | None = None, eos_token_id=None) -> SpecOutput:
    """Self-speculative decoding with a draft view of the model's own weights.

    Greedy (temperature 0) is lossless: the tokens equal ``greedy_generate``'s. Sampling is exact
    speculative sampling, seeded by ``seed``. Each step: the draft proposes up to k tokens (one cached
    forward each), the full model verifies them in ONE cached forward, both caches are rolled back to
    the accepted position.

    Rollback choice: snapshot-and-re-feed for the full model, per-token snapshots for the draft.
    The full model verifies k+1 tokens in one chunked forward, which exposes only the final recurrent
    state; after a partial acceptance we restore the snapshot taken before the verify and re-feed the
    accepted tokens in one more cached forward (counted in ``stats.rollback_*``). This is exact for
    every state layout and every kernel (pure-torch or mamba-ssm/fla on GPU), at the price of at most
    k extra tokens per rejecting step. Pure transformers need no re-feed: cropping the KV is exact.
    The draft runs one token at a time anyway, so a clone of its states after each draft token makes
    its rollback a plain restore, with no extra forward."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (the number of draft tokens per step), got {k!r}")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not isinstance(draft, Draft):
        raise TypeError("draft must be a hybridspec Draft, e.g. Draft.attention_off()")
    anat = anatomy(model)
    plan = draft.plan(anat)
    ids = _prepare_prompt(model, input_ids, max_new_tokens, anat)
    eos = _eos_set(model, eos_token_id)
    device = ids.device
    sampling = temperature > 0
    generator = None
    if sampling:
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))

    def choose(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not sampling:
            return logits.argmax(-1).view(1), None
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator), probs

    stats = SpecStats(k=k, prompt_tokens=ids.numel())
    clock = time.perf_counter
    _sync(device)
    started = clock()

    # Prefill both views; the first new token comes from the full model.
    full_cache, draft_cache = new_cache(model), new_cache(model)
    logits = _forward(model, ids, full_cache, 0, last_only=True)
    stats.prefill_tokens = ids.numel()
    with draft_view(model, plan):
        _forward(model, ids, draft_cache, 0, last_only=True, mask_layer=plan.mask_layer)
    stats.draft_prefill_tokens = ids.numel()
    current, _ = choose(logits[-1])
    new_tokens = current.tolist()
    full_length = draft_length = ids.numel()          # tokens inside each cache
    draft_pending = current                            # tokens the draft cache has not seen yet
    full_has_state = _has_recurrent_state(full_cache)
    draft_has_state = _has_recurrent_state(draft_cache)
    _sync(device)
    stats.time_prefill = clock() - started
    finished = int(current) in eos

    while not finished and len(new_tokens) < max_new_tokens:
        n_draft = min(k, max_new_tokens - len(new_tokens) - 1)  # never produce more than asked for

        # Draft: n_draft cached forwards of the draft view, a state snapshot after each but the last.
        t0 = clock()
        drafts, draft_probs, draft_snapshots = [], [], []
        if n_draft:
            with draft_view(model, plan):
                feed = draft_pending
                for i in range(n_draft):
                    draft_logits = _forward(model, feed, draft_cache, draft_length, last_only=True,
                                            mask_layer=plan.mask_layer)
                    draft_length += feed.numel()
                    stats.draft_forwards += 1
                    stats.draft_tokens += feed.numel()
                    if i < n_draft - 1:
                        draft_snapshots.append((snapshot_cache(draft_cache), draft_length))
                        stats.rollback_snapshots += 1
                    token, probs = choose(draft_logits[-1])
                    drafts.append(token)
                    draft_probs.append(probs)
                    feed = token
        drafts_tensor = torch.cat(drafts) if drafts else ids.new_empty(0)
        _sync(device)
        t1 = clock()

        # Verify: one cached forward of [current, d1..dn] through the full model.
        full_snapshot = snapshot_cache(full_cache) if (full_has_state and n_draft) else None
        if full_snapshot is not None:
            stats.rollback_snapshots += 1
        block = torch.cat([current, drafts_tensor])
        target_logits = _forward(model, block, full_cache, full_length)
        full_length += block.numel()
        stats.verify_forwards += 1
        stats.verify_tokens += block.numel()
        if sampling:
            target_probs = torch.softmax(target_logits / temperature, dim=-1)
            q = torch.cat([p.unsqueeze(0) for p in draft_probs]) if draft_probs else target_probs[:0]
            accepted, next_token = speculative_accept(target_probs, q, drafts_tensor, generator)
        else:
            accepted, next_token = _greedy_accept(target_logits, drafts_tensor)
        _sync(device)
        t2 = clock()

        # Roll back. Full cache: keep [current, d1..d_accepted].
        rejected = n_draft - accepted
        if rejected:
            if full_snapshot is None:
                restore_cache(full_cache, _empty_like_snapshot(full_cache, full_length - block.numel()),
                              keep_tokens=accepted + 1)
            else:
                restore_cache(full_cache, full_snapshot)
                _forward(model, block[: accepted + 1], full_cache, full_length - block.numel(), last_only=True)
                stats.rollback_forwards += 1
                stats.rollback_tokens += accepted + 1
            full_length -= rejected
        # Draft cache: it has seen [pending, d1..d_{n-1}]; it must hold [pending, d1..d_accepted].
        if n_draft == 0:
            draft_pending = torch.cat([draft_pending, next_token])
        elif accepted == n_draft:
            draft_pending = torch.cat([drafts_tensor[-1:], next_token])
        else:
            if accepted < n_draft - 1:
                snapshot, length = draft_snapshots[accepted]
                restore_cache(draft_cache, snapshot)
                draft_length = length
            draft_pending = next_token
        current = next_token
        _sync(device)
        t3 = clock()
        stats.time_draft += t1 - t0
        stats.time_verify += t2 - t1
        stats.time_rollback += t3 - t2

        stats.accepted.append(accepted)
        stats.drafted.append(n_draft)
        for token in drafts_tensor[:accepted].tolist() + next_token.tolist():
            new_tokens.append(token)
            if token in eos:
                finished = True
                break

    _sync(device)
    stats.time_total = clock() - started
    tokens = torch.tensor(new_tokens, dtype=torch.long, device=device)
    stats.new_tokens = tokens.numel()
    return SpecOutput(tokens=tokens, stats=stats, full_cache=full_cache, draft_cache=draft_cache,
                      draft_pending=draft_pending)


def _empty_like_snapshot(cache, kv_length: int) -> CacheSnapshot:
    """A snapshot that only records a KV length, for caches with nothing but KV (plain transformers)."""
    return CacheSnapshot([kv_length if _kv_length(layer) else 0 for layer in cache.layers], [])


# ------------------------------------------------------------------------------------------------
# 6. Measurements
# ------------------------------------------------------------------------------------------------

def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (seeded)."""
    import numpy as np
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


@torch.inference_mode()
def acceptance_one_round(model, prompt, draft: Draft, k: int, temperature: float = 0.0,
                         generator: torch.Generator | None = None) -> int:
    """The paper's protocol for one prompt: the draft proposes k tokens right after the prompt, the
    full model scores prompt + drafts in one forward, and the leading accepted drafts are counted
    (greedy: equal to the argmax; T > 0: kept with probability min(1, p/q)). No bonus token."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    anat = anatomy(model)
    plan = draft.plan(anat)
    ids = _prepare_prompt(model, prompt, k, anat)
    sampling = temperature > 0
    cache = new_cache(model)
    drafts, draft_probs = [], []
    with draft_view(model, plan):
        feed, length = ids, 0
        for _ in range(k):
            logits = _forward(model, feed, cache, length, last_only=True, mask_layer=plan.mask_layer)[-1]
            length += feed.numel()
            if sampling:
                probs = torch.softmax(logits / temperature, -1)
                feed = torch.multinomial(probs, 1, generator=generator)
                draft_probs.append(probs)
            else:
                feed = logits.argmax().view(1)
            drafts.append(feed)
    drafts_tensor = torch.cat(drafts)
    full_logits = model(torch.cat([ids, drafts_tensor]).unsqueeze(0), use_cache=False).logits[0].float()
    target = full_logits[ids.numel() - 1: ids.numel() - 1 + k]
    if not sampling:
        return int((target.argmax(-1) == drafts_tensor).int().cumprod(0).sum())
    p = torch.softmax(target / temperature, -1)
    q = torch.stack(draft_probs)
    rows = torch.arange(k, device=ids.device)
    uniforms = torch.rand(k, generator=generator, device=ids.device)
    return int((uniforms * q[rows, drafts_tensor] < p[rows, drafts_tensor]).int().cumprod(0).sum())


def paper_protocol(model, prompts: Sequence[torch.Tensor], draft: Draft, k: int, temperature: float = 0.0,
                   seed: int = 0, n_boot: int = 2000, progress: bool = False) -> dict:
    """alpha = mean over prompts of accepted / k with a 95% bootstrap CI (one round per prompt)."""
    generator = torch.Generator(device=_model_device(model)).manual_seed(seed) if temperature > 0 else None
    iterator = prompts
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(prompts, desc=f"{draft.name} k={k} T={temperature}", leave=False)
    accepted = [acceptance_one_round(model, p, draft, k, temperature, generator) for p in iterator]
    rates = [a / k for a in accepted]
    low, high = bootstrap_ci(rates, n_boot=n_boot, seed=seed)
    return {"draft": draft.name, "k": k, "temperature": temperature, "n_prompts": len(rates),
            "alpha": sum(rates) / len(rates) if rates else float("nan"), "ci_low": low, "ci_high": high,
            "accepted": accepted}


def _chunks(sequences: Iterable[torch.Tensor], max_length: int) -> Iterable[torch.Tensor]:
    for sequence in sequences:
        sequence = torch.as_tensor(sequence).reshape(-1)
        for start in range(0, max(sequence.numel() - 1, 0), max_length):
            chunk = sequence[start: start + max_length + 1]
            if chunk.numel() >= 2:
                yield chunk


@torch.inference_mode()
def perplexity(model, sequences: Iterable[torch.Tensor], draft: Draft | None = None, max_length: int = 512) -> float:
    """Token-level perplexity on ``sequences`` (1-D token tensors, split into windows of
    ``max_length``), of the full model or of a draft view. The ratio draft / full is the paper's
    ablation ratio."""
    device = _model_device(model)
    total_nll, total_tokens = 0.0, 0
    view = draft_view(model, draft) if draft is not None else contextlib.nullcontext()
    with view:
        for chunk in _chunks(sequences, max_length):
            chunk = chunk.to(device)
            logits = model(chunk[:-1].unsqueeze(0), use_cache=False).logits[0].float()
            total_nll += float(F.cross_entropy(logits, chunk[1:], reduction="sum"))
            total_tokens += chunk.numel() - 1
    if not total_tokens:
        raise ValueError("perplexity needs at least one sequence of two or more tokens")
    return math.exp(total_nll / total_tokens)


@torch.inference_mode()
def divergence(model, sequences: Iterable[torch.Tensor], draft: Draft, max_length: int = 512) -> dict:
    """Per-position divergence of the draft's next-token distribution from the full model's on the
    given text (teacher forcing): total variation D_TV, top-1 agreement and KL(full || draft).
    Returns 1-D numpy arrays ``position``, ``tv``, ``top1``, ``kl`` and their means."""
    import numpy as np
    device = _model_device(model)
    columns = {"position": [], "tv": [], "top1": [], "kl": []}
    for chunk in _chunks(sequences, max_length):
        inputs = chunk[:-1].unsqueeze(0).to(device)
        full = torch.log_softmax(model(inputs, use_cache=False).logits[0].float(), -1)
        with draft_view(model, draft):
            approx = torch.log_softmax(model(inputs, use_cache=False).logits[0].float(), -1)
        p, q = full.exp(), approx.exp()
        columns["position"].append(np.arange(inputs.shape[1]))
        columns["tv"].append((0.5 * (p - q).abs().sum(-1)).cpu().numpy())
        columns["top1"].append((full.argmax(-1) == approx.argmax(-1)).float().cpu().numpy())
        columns["kl"].append((p * (full - approx)).sum(-1).clamp_min(0).cpu().numpy())
    result = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in columns.items()}
    result.update(tv_mean=float(result["tv"].mean()), top1_agreement=float(result["top1"].mean()),
                  kl_mean=float(result["kl"].mean()))
    return result


# ------------------------------------------------------------------------------------------------
# 7. The book's data: shipped evaluation text and prompts, the paper's reference numbers
# ------------------------------------------------------------------------------------------------

DATA_DIR = MINIATURES_DIR / "data"
PAPER_REFERENCE_DIR = REPO_ROOT / "reference" / "paper"
# The paper's draft names for ours, per family (reference tables use theirs).
PAPER_MODEL_KEYS = {"parallel": "falcon-h1-0.5b", "sequential": "qwen3.5-0.8b", "transformer": "qwen2.5-0.5b"}


def load_prompts(tokenizer, n: int = 200, max_tokens: int = 512, path: str | os.PathLike | None = None) -> list[torch.Tensor]:
    """The acceptance prompts, built the paper's way (paragraphs longer than 100 characters of the
    held-out text, first ``n``, truncated to ``max_tokens`` tokens), as 1-D LongTensors."""
    import json
    source = Path(path) if path is not None else DATA_DIR / "prompts.jsonl"
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: run `make miniatures` (or `python -m training.corpus`)")
    texts = [json.loads(line)["text"] for line in source.read_text().splitlines() if line.strip()]
    if n > len(texts):
        raise ValueError(f"asked for {n} prompts but {source} holds {len(texts)}")
    return [tokenizer(text, return_tensors="pt").input_ids[0][:max_tokens] for text in texts[:n]]


def evaluation_sequences(tokenizer, max_tokens: int | None = None, path: str | os.PathLike | None = None) -> list[torch.Tensor]:
    """The held-out test documents (miniatures/data/test_split.txt), tokenized one per document;
    ``max_tokens`` caps the total (documents are cut, in order) for quick runs."""
    source = Path(path) if path is not None else DATA_DIR / "test_split.txt"
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: run `make miniatures` (or `python -m training.corpus`)")
    documents = re.split(r"(?m)^\.\. hybridspec-document: .*$\n?", source.read_text())
    sequences, budget = [], max_tokens
    for document in documents:
        if not document.strip():
            continue
        ids = tokenizer(document, return_tensors="pt").input_ids[0]
        if budget is not None:
            ids = ids[:budget]
            budget -= ids.numel()
        if ids.numel() >= 2:
            sequences.append(ids)
        if budget is not None and budget <= 0:
            break
    return sequences


def paper_reference(table: str) -> list[dict]:
    """Rows of one of the paper's published tables (reference/paper/TABLE.csv), numbers as floats.
    Only for the labelled "paper" column beside our measurements."""
    import csv
    source = PAPER_REFERENCE_DIR / f"{table}.csv"
    if not source.is_file():
        known = sorted(p.stem for p in PAPER_REFERENCE_DIR.glob("*.csv"))
        raise FileNotFoundError(f"no paper table {table!r}; known: {', '.join(known)}")

    def number(value: str):
        try:
            return float(value)
        except ValueError:
            return value
    with source.open() as handle:
        return [{key: number(value) for key, value in row.items()} for row in csv.DictReader(handle)]


# ------------------------------------------------------------------------------------------------
# 8. Command line
# ------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridspec_core",
                                     description="Component-aware self-speculative decoding for hybrid LMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate text with self-speculative decoding")
    generate.add_argument("--model", required=True,
                          help=f"shipped miniature ({', '.join(shipped_miniatures()) or 'none yet'}), local folder, or hub id")
    generate.add_argument("--prompt", required=True, help="the prompt text")
    generate.add_argument("--k", type=int, default=4, help="draft tokens per step (>= 1; default 4)")
    generate.add_argument("--draft", default="attention_off",
                          help="draft view: attention_off[:keep_mlp|:LAYERS], layer_skip[:FRACTION|:LAYERS], "
                               "early_exit:N, combined with '+' (default attention_off)")
    generate.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (lossless); > 0 = exact sampling")
    generate.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")
    generate.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    generate.add_argument("--dtype", default=None, help="float32, bfloat16, ... (default: float32 on CPU, checkpoint dtype on GPU)")
    generate.add_argument("--device-map", default=None, help="passed to transformers, e.g. auto (multi-GPU)")
    generate.add_argument("--check", action="store_true", help="also run plain greedy decoding and compare the tokens")

    show = commands.add_parser("anatomy", help="print a model's family and per-layer components")
    show.add_argument("--model", required=True, help="shipped miniature, local folder, or hub id")

    args = parser.parse_args(argv)
    model, tokenizer = load(args.model, device=getattr(args, "device", None), dtype=getattr(args, "dtype", None),
                            device_map=getattr(args, "device_map", None))
    if args.command == "anatomy":
        print(anatomy(model).describe())
        return 0
    input_ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    out = speculative_generate(model, input_ids, draft=Draft.parse(args.draft), k=args.k,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    print(tokenizer.decode(out.tokens, skip_special_tokens=True))
    print(f"[{anatomy(model).family} | {Draft.parse(args.draft).name}] {out.stats.summary()}")
    if args.check:
        if args.temperature > 0:
            print("--check compares greedy decoding; it is skipped at temperature > 0")
        else:
            reference = greedy_generate(model, input_ids, max_new_tokens=args.max_new_tokens)
            same = torch.equal(reference.cpu(), out.tokens.cpu())
            print(f"check: speculative tokens {'EQUAL' if same else 'DIFFER FROM'} plain greedy decoding")
            return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
