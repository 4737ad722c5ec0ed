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


# Per-position rollback of the full model's recurrent states, without a re-feed.
#
# The snapshot above is exact but needs a second forward (restore, then re-feed the accepted tokens).
# What follows avoids it: while the full model verifies a block, the recurrent mixers' scan functions
# are wrapped (``_DecodingPatches``) so that they keep what a rollback to ANY position of the block
# needs (the state after each token, or the scan's inputs and initial state), and after a partial
# acceptance ``_DecodingPatches.rollback`` rebuilds the cache from those. speculative_generate (5.)
# uses it for every mixer it covers and falls back to the snapshot for anything else.

def _mamba2_sequential(hidden_states, dt, A, B, C, chunk_size=None, D=None, dt_bias=None, initial_states=None,
                       dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False, z=None,
                       states_out: list | None = None, **kwargs):
    """``mamba2_chunk_scan`` for a SHORT block, one token at a time: the recurrence of transformers'
    ``mamba2_selective_state_update`` (what every single-token step runs), with the chunked scan's
    dt handling (bias, softplus, ``dt_limit``). On the CPU this is cheaper than one chunk for the
    blocks of decoding (k + 1 <= 9 tokens), and the state after every token comes for free: it is
    appended to ``states_out`` when given (what the per-position rollback keeps)."""
    batch, length, heads, _ = hidden_states.shape
    repeat = heads // B.shape[2]
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1]).float()
    x = hidden_states.float()
    B = B.float().repeat_interleave(repeat, dim=2)                    # (b, T, heads, n)
    C = C.float().repeat_interleave(repeat, dim=2).unsqueeze(-1)      # (b, T, heads, n, 1)
    decay = torch.exp(dt * A.float())[..., None, None]                # (b, T, heads, 1, 1)
    update = (dt[..., None] * B)[..., None, :] * x[..., None]         # (b, T, heads, p, n)
    state = (initial_states.float() if initial_states is not None
             else torch.zeros_like(update[:, 0]))
    outputs = []
    for t in range(length):
        state = state * decay[:, t] + update[:, t]
        if states_out is not None:
            states_out.append(state)
        outputs.append((state @ C[:, t]).squeeze(-1))
    out = torch.stack(outputs, 1)
    if D is not None:
        out = out + D[:, None].float() * x
    if z is not None:
        out = out * F.silu(z.float())
    return (out, state) if return_final_states else out


@dataclasses.dataclass(frozen=True)
class _ScanSpec:
    """How to read one chunked scan's call: per-token inputs (batch, T, heads, ...), per-head
    parameters (heads,), the argument carrying the initial state (batch, heads, ...), the flag that
    asks for the final state, arguments that only shape the output (dropped on a recompute), and
    what runs a block of at most ``short_max`` tokens on the CPU instead (the name of a function of
    the same modeling module, or a function of ours)."""

    tokens: tuple[str, ...]
    heads: tuple[str, ...]
    state: str
    final: str
    output_only: tuple[str, ...] = ()
    short: object = None
    short_max: int = 0


# The chunked scans of the recurrent mixers, under the names transformers' modeling files bind them
# (module globals, looked up at call time): Falcon-H1's Mamba-2 and Qwen3.5 / Qwen3-Next's Gated
# DeltaNet. The same names hold the mamba-ssm / fla kernels when those are installed. Short blocks on
# the CPU: Mamba-2 runs token by token (``_mamba2_sequential``), Gated DeltaNet through transformers'
# own recurrent form (faster than one chunk up to about 5 tokens, measured on one thread).
_SCANS = {
    "mamba2_chunk_scan": _ScanSpec(tokens=("hidden_states", "dt", "B", "C"), heads=("A", "dt_bias"),
                                   state="initial_states", final="return_final_states", output_only=("D", "z"),
                                   short=_mamba2_sequential, short_max=16),
    "torch_chunk_gated_delta_rule": _ScanSpec(tokens=("query", "key", "value", "g", "beta"), heads=(),
                                              state="initial_state", final="output_final_state",
                                              short="torch_recurrent_gated_delta_rule", short_max=5),
}


def _short_chunk(length: int, default, device: torch.device):
    """Chunk size for a short block. The scans pad a block to a multiple of the chunk size, so a
    5-token verify with a default of 64 or 256 pays for 64 or 256 positions. On the CPU (pure-torch
    scans) the block is one chunk of its own length; elsewhere a power of two >= 16 (kernel tiles)."""
    if not isinstance(default, int) or default < 1:
        return default
    if device.type == "cpu":
        return max(1, min(default, length))
    return min(default, max(16, 1 << max(0, length - 1).bit_length()))


@dataclasses.dataclass
class _ScanCall:
    function: object          # what ran the block (and recomputes a state on rollback)
    spec: _ScanSpec
    names: tuple[str, ...]    # its arguments' names, in order
    positional: int           # arguments passed positionally (kernels name them differently)
    call: dict                # argument name -> value
    target: torch.Tensor      # the cache's state tensor, overwritten by the forward
    saved: torch.Tensor | None = None     # its value before the forward (for a recompute)
    states: list | None = None            # or the state after every token of the block
    short: object = None                  # the short-block function (a recompute of few tokens uses it)
    short_names: tuple[str, ...] = ()


class _DecodingPatches:
    """Active while one speculative generation runs (and undone after it).

    1. Every chunked scan of the model's recurrent mixers (``_SCANS``) runs short blocks cheaply: on
       the CPU a block of at most ``short_max`` tokens runs token by token (Mamba-2) or through the
       recurrent form (Gated DeltaNet); otherwise the chunk size is fitted to the block
       (``_short_chunk``). A verify forward then costs about a cached forward of k+1 tokens, not one
       padded to a whole chunk.
    2. While ``recording`` (the full model's verify forward), each scan keeps the state after every
       token of the block (token-by-token runs) or its inputs and a clone of its initial state, and
       the cache keeps each conv window it assembles (the previous window followed by the block).

    After a partial acceptance, ``rollback(m, base)`` puts the full cache where it would be after
    the first m tokens of the block: KV cropped to base + m, each conv state cut from its kept
    window, each recurrent state copied from the kept per-token states or recomputed by the SAME
    function on the kept m tokens from the saved initial state, all layers of a kind in ONE call
    (layers side by side as heads: the scans treat heads independently). No forward pass is re-run.
    If the verify did not keep every state of the cache (a mixer these names do not cover),
    ``covers`` is false and the caller re-feeds."""

    def __init__(self, model, cache):
        import inspect
        self.cache = cache
        self.recording = False
        self.seconds = 0.0               # time spent keeping states: bookkeeping, not verify work
        self.scans: list[_ScanCall] = []
        self.convs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._globals: list[tuple[dict, str, object]] = []

        def argument_names(function) -> tuple[str, ...]:
            try:
                return tuple(inspect.signature(function).parameters) if callable(function) else ()
            except (TypeError, ValueError):
                return ()

        modules = {sys.modules[type(getattr(layer, attribute)).__module__]
                   for layer in _decoder_layers(model) for attribute in ("mamba", "linear_attn")
                   if isinstance(getattr(layer, attribute, None), nn.Module)}
        try:
            for module in modules:
                for name, spec in _SCANS.items():
                    original = getattr(module, name, None)
                    names = argument_names(original)
                    # Only a function whose arguments read as the spec says (else: the re-feed fallback).
                    if not all(arg in names for arg in (*spec.tokens, *spec.heads, spec.state, spec.final)):
                        continue
                    short = getattr(module, spec.short, None) if isinstance(spec.short, str) else spec.short
                    short_names = argument_names(short)
                    if not all(arg in short_names for arg in (*spec.tokens, spec.state, spec.final)):
                        short = None
                    default_chunk = inspect.signature(original).parameters.get("chunk_size")
                    wrapper = self._wrap(original, names, short, short_names, spec,
                                         getattr(default_chunk, "default", None))
                    self._globals.append((vars(module), name, original))
                    vars(module)[name] = wrapper
            self._conv_method = getattr(type(cache), "update_conv_state", None)
            if self._conv_method is not None:
                cache.update_conv_state = self._record_conv
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for namespace, name, original in reversed(self._globals):
            namespace[name] = original
        self._globals = []
        self.cache.__dict__.pop("update_conv_state", None)
        self.scans, self.convs, self.recording = [], [], False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wrap(self, original, names, short, short_names, spec: _ScanSpec, default_chunk):
        patches = self
        chunk_position = names.index("chunk_size") if "chunk_size" in names else None
        keeps_states = short is _mamba2_sequential

        def scan(*args, **kwargs):
            call = dict(zip(names, args))
            call.update(kwargs)
            tokens = call[spec.tokens[0]]
            length = tokens.shape[1]
            state = call.get(spec.state)
            if short is not None and tokens.device.type == "cpu" and length <= spec.short_max:
                function, fnames, args = short, short_names, ()
                kwargs = {key: value for key, value in call.items() if key != "chunk_size"}
            else:
                function, fnames = original, names
                if chunk_position is not None and len(args) <= chunk_position:
                    kwargs["chunk_size"] = _short_chunk(length, kwargs.get("chunk_size", default_chunk), tokens.device)
            states = None
            if patches.recording and state is not None:
                started = time.perf_counter()
                if function is short and keeps_states:
                    states = kwargs["states_out"] = []
                    entry = _ScanCall(function, spec, fnames, len(args), kwargs, state, states=states)
                else:
                    entry = _ScanCall(function, spec, fnames, len(args), dict(zip(fnames, args)) | kwargs, state,
                                      saved=state.clone(), short=short, short_names=short_names)
                patches.scans.append(entry)
                patches.seconds += time.perf_counter() - started
            return function(*args, **kwargs)

        scan.__wrapped__ = original
        return scan

    def _record_conv(self, conv_states, layer_idx, state_idx=0, **kwargs):
        window = self._conv_method(self.cache, conv_states, layer_idx, state_idx, **kwargs)
        if self.recording:
            self.convs.append((self.cache.layers[layer_idx].conv_states[state_idx], window))
        return window

    def start(self) -> None:
        self.scans, self.convs, self.seconds = [], [], 0.0
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def covers(self, state_tensors: Sequence[torch.Tensor]) -> bool:
        """Whether the last recorded forward kept every conv and recurrent state of the cache."""
        kept = {id(c.target) for c in self.scans} | {id(target) for target, _ in self.convs}
        return bool(state_tensors) and all(id(t) in kept for t in state_tensors)

    def rollback(self, kept: int, base_length: int) -> int:
        """Roll the full cache back to ``base_length + kept`` tokens (``kept`` of the verified block).
        Returns how many tokens went through a scan again (0 when every state was kept per token)."""
        _crop_kv(self.cache, base_length + kept)
        if self.convs:
            _copy_into([t for t, _ in self.convs], [w[..., kept: kept + t.shape[-1]] for t, w in self.convs])
        stored = [call for call in self.scans if call.states is not None]
        if stored:
            _copy_into([call.target for call in stored], [call.states[kept - 1] for call in stored])
        groups: dict[tuple, list[_ScanCall]] = {}
        for call in self.scans:
            if call.states is None:
                groups.setdefault(_scan_group(call), []).append(call)
        for calls in groups.values():
            _recompute_states(calls, kept)
        return kept if groups else 0


def _scan_group(call: _ScanCall) -> tuple:
    """Calls that can share one recompute: same function and settings, same shapes but the heads."""
    key: list = [id(call.function), call.positional]
    for name in sorted(call.call):
        value = call.call[name]
        if name in call.spec.output_only:
            continue
        if isinstance(value, torch.Tensor):
            if name in call.spec.tokens:
                key.append((name, value.shape[:2], value.shape[3:], value.dtype))
            elif name == call.spec.state:
                key.append((name, value.shape[:1], value.shape[2:], value.dtype))
            elif name in call.spec.heads:
                key.append((name, value.dtype))
            else:
                key.append((name, id(value)))
        else:
            key.append((name, repr(value)))
    return tuple(key)


def _recompute_states(calls: list[_ScanCall], kept: int) -> None:
    """The recurrent state after the first ``kept`` tokens, for every call of a group at once."""
    first = calls[0]
    spec = first.spec
    single = len(calls) == 1
    joined = {}
    for name, value in first.call.items():
        if name in spec.tokens:
            joined[name] = value[:, :kept] if single else torch.cat([c.call[name][:, :kept] for c in calls], 2)
        elif name in spec.heads and isinstance(value, torch.Tensor):
            joined[name] = value if single else torch.cat([c.call[name] for c in calls], 0)
        elif name == spec.state:
            joined[name] = first.saved if single else torch.cat([c.saved for c in calls], 1)
        elif name in spec.output_only:
            joined[name] = None
        else:
            joined[name] = value
    joined[spec.final] = True
    tokens = joined[spec.tokens[0]]
    if first.short is not None and tokens.device.type == "cpu" and kept <= spec.short_max:
        joined.pop("chunk_size", None)    # the short-block function, as a verify of ``kept`` tokens would run
        final = first.short(**{name: value for name, value in joined.items() if name in first.short_names})[1]
    else:
        if "chunk_size" in joined:
            joined["chunk_size"] = _short_chunk(kept, joined["chunk_size"], tokens.device)
        args = [joined.pop(name) for name in first.names[: first.positional]]
        final = first.function(*args, **joined)[1]
    parts = [final] if single else final.split([c.saved.shape[1] for c in calls], dim=1)
    _copy_into([c.target for c in calls], parts)


def _copy_into(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> None:
    """In place (transformers marks the state tensors as static addresses), in one call if it can."""
    if all(t.dtype == s.dtype and t.device == s.device for t, s in zip(targets, sources)):
        torch._foreach_copy_(list(targets), list(sources))
    else:
        for target, source in zip(targets, sources):
            target.copy_(source)


def _state_tensors(cache) -> list[torch.Tensor]:
    """The conv and recurrent state tensors of a cache (updated in place, so the list stays valid)."""
    return [tensor for layer in cache.layers
            for store in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None))
            for tensor in (store or {}).values() if tensor is not None]


def _crop_kv(cache, length: int) -> None:
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.dim() > 1 and keys.shape[-2] > length:
            layer.keys = keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


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
    rollback_forwards: int = 0       # re-feeds of accepted tokens after a restore (fallback for unknown mixers)
    rollback_tokens: int = 0
    rollback_scan_tokens: int = 0    # tokens re-run through the recurrent scans only (per-position rollback
                                     # of states not kept per token), no forward pass
    rollback_snapshots: int = 0      # state copies taken (draft: after each draft token but the last)
    rollback_method: str = ""        # "per-position states" | "snapshot + re-feed" | "crop" (KV only)
    time_prefill: float = 0.0
    time_draft: float = 0.0          # draft forwards
    time_verify: float = 0.0         # verify forwards and the accept rule
    time_rollback: float = 0.0       # rollback and bookkeeping: state copies, restores, crops, re-feeds, emitting
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
                f"full-model tokens={self.full_model_tokens} (rollback {self.rollback_method or '-'}: "
                f"{self.rollback_tokens} re-fed, {self.rollback_scan_tokens} re-scanned) "
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

    Rollback of the full model: a chunked verify forward of k+1 tokens exposes only the final
    recurrent state, so while it runs the scans of the recurrent mixers keep the state after every
    token, or their inputs and initial state, and the cache keeps each conv window
    (``_DecodingPatches``). After a partial acceptance the KV is cropped, the conv states are cut
    from the kept windows, and each recurrent state is copied from the kept ones or recomputed by
    the same scan function on the accepted tokens only (one call for all layers of a kind): no
    forward pass is re-run (``stats.rollback_method == "per-position states"``,
    ``stats.rollback_scan_tokens``). For a recurrent mixer that these scans do not cover, the older
    exact fallback runs: restore a clone of the states taken before the verify and re-feed the
    accepted tokens in one more cached forward (``"snapshot + re-feed"``, ``stats.rollback_forwards``).
    Pure transformers need neither: cropping the KV is exact (``"crop"``). Short blocks also skip the
    padded chunk: on the CPU, Mamba-2 runs them token by token (keeping the state after each token,
    so its rollback is a copy) and Gated DeltaNet blocks of up to 5 tokens run its recurrent form;
    longer blocks, and accelerators, get a chunk size fitted to the block (the default pads a
    5-token block to 64 or 256). The draft runs one token at a time, so a copy of its states after
    each draft token (into buffers allocated once) makes its rollback a plain restore, with no extra
    forward."""
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
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=device) if eos else None
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

    # Prefill both views (with the models' own chunk sizes); the first new token comes from the full model.
    full_cache, draft_cache = new_cache(model), new_cache(model)
    logits = _forward(model, ids, full_cache, 0, last_only=True)
    stats.prefill_tokens = ids.numel()
    with draft_view(model, plan):
        _forward(model, ids, draft_cache, 0, last_only=True, mask_layer=plan.mask_layer)
    stats.draft_prefill_tokens = ids.numel()
    current, _ = choose(logits[-1])
    pieces = [current]                                 # the new tokens, in pieces of one step each
    produced = 1
    full_length = draft_length = ids.numel()          # tokens inside each cache
    draft_pending = current                            # tokens the draft cache has not seen yet
    full_states = _state_tensors(full_cache)
    draft_states = _state_tensors(draft_cache)
    # The draft's state after each of its first k-1 tokens, copied into buffers allocated once.
    draft_buffers = [[torch.empty_like(t) for t in draft_states] for _ in range(k - 1)] if draft_states else []
    draft_marks = [0] * max(k - 1, 0)
    method = None if full_states else "crop"           # decided at the first verify of a hybrid
    stats.rollback_method = method or ""
    _sync(device)
    stats.time_prefill = clock() - started
    finished = int(current) in eos

    with _DecodingPatches(model, full_cache) if full_states else contextlib.nullcontext() as patches:
        while not finished and produced < max_new_tokens:
            n_draft = min(k, max_new_tokens - produced - 1)  # never produce more than asked for
            recording = bool(n_draft) and method in (None, "per-position states")
            draft_book = verify_book = 0.0                 # snapshot time inside the draft / verify phases

            # Draft: n_draft cached forwards of the draft view, its states kept after each but the last.
            t0 = clock()
            drafts, draft_probs = [], []
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
                            tb = clock()
                            draft_marks[i] = draft_length
                            if draft_states:
                                torch._foreach_copy_(draft_buffers[i], draft_states)
                            stats.rollback_snapshots += 1
                            draft_book += clock() - tb
                        token, probs = choose(draft_logits[-1])
                        drafts.append(token)
                        draft_probs.append(probs)
                        feed = token
            drafts_tensor = torch.cat(drafts) if drafts else ids.new_empty(0)
            _sync(device)
            t1 = clock()

            # Verify: one cached forward of [current, d1..dn] through the full model.
            snapshot = None
            if n_draft and method in (None, "snapshot + re-feed"):
                tb = clock()
                snapshot = snapshot_cache(full_cache)
                stats.rollback_snapshots += 1
                verify_book += clock() - tb
            if recording:
                patches.start()
            block = torch.cat([current, drafts_tensor])
            target_logits = _forward(model, block, full_cache, full_length)
            base_length = full_length
            full_length += block.numel()
            stats.verify_forwards += 1
            stats.verify_tokens += block.numel()
            if recording:
                patches.stop()
                verify_book += patches.seconds
                if method is None:
                    method = "per-position states" if patches.covers(full_states) else "snapshot + re-feed"
                    stats.rollback_method = method
            if sampling:
                target_probs = torch.softmax(target_logits / temperature, dim=-1)
                q = torch.stack(draft_probs) if draft_probs else target_probs[:0]
                accepted, next_token = speculative_accept(target_probs, q, drafts_tensor, generator)
            else:
                accepted, next_token = _greedy_accept(target_logits, drafts_tensor)
            _sync(device)
            t2 = clock()

            # Roll back. Full cache: keep [current, d1..d_accepted].
            rejected = n_draft - accepted
            if rejected:
                if method == "crop":
                    _crop_kv(full_cache, base_length + accepted + 1)
                elif method == "per-position states":
                    stats.rollback_scan_tokens += patches.rollback(accepted + 1, base_length)
                else:
                    restore_cache(full_cache, snapshot)
                    _forward(model, block[: accepted + 1], full_cache, base_length, last_only=True)
                    stats.rollback_forwards += 1
                    stats.rollback_tokens += accepted + 1
                full_length -= rejected
            if patches is not None:
                patches.scans, patches.convs = [], []
            # Draft cache: it has seen [pending, d1..d_{n-1}]; it must hold [pending, d1..d_accepted].
            if n_draft == 0:
                draft_pending = torch.cat([draft_pending, next_token])
            elif accepted == n_draft:
                draft_pending = torch.cat([drafts_tensor[-1:], next_token])
            else:
                if accepted < n_draft - 1:
                    if draft_states:
                        torch._foreach_copy_(draft_states, draft_buffers[accepted])
                    _crop_kv(draft_cache, draft_marks[accepted])
                    draft_length = draft_marks[accepted]
                draft_pending = next_token
            current = next_token

            # Emit [d1..d_accepted, next], cut after an end-of-sequence token (no per-token loop).
            emitted = torch.cat([drafts_tensor[:accepted], next_token])
            if eos_ids is not None:
                hits = torch.isin(emitted, eos_ids).nonzero()
                if hits.numel():
                    emitted = emitted[: int(hits[0]) + 1]
                    finished = True
            pieces.append(emitted)
            produced += emitted.numel()
            stats.accepted.append(accepted)
            stats.drafted.append(n_draft)
            _sync(device)
            t3 = clock()
            stats.time_draft += t1 - t0 - draft_book
            stats.time_verify += t2 - t1 - verify_book
            stats.time_rollback += t3 - t2 + draft_book + verify_book

    _sync(device)
    stats.time_total = clock() - started
    tokens = torch.cat(pieces)
    stats.new_tokens = tokens.numel()
    return SpecOutput(tokens=tokens, stats=stats, full_cache=full_cache, draft_cache=draft_cache,
                      draft_pending=draft_pending)


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


def paper_protocol_all_k(model, prompts: Sequence[torch.Tensor], draft: Draft, ks: Sequence[int],
                         temperature: float = 0.0, seed: int = 0, n_boot: int = 2000) -> dict[int, dict]:
    """``paper_protocol`` for every k in ``ks`` from ONE round of the largest per prompt. A round drafts
    token after token, each conditioned on those before, and counts acceptances up to the first
    rejection, so the first k tokens of a k_max round are a k round: min(accepted, k) is what the k
    round accepts (the same tokens at T = 0, the same distribution at T > 0; tests/test_core.py checks
    T = 0 against separate rounds). {k: paper_protocol's dict for that k}."""
    top = paper_protocol(model, prompts, draft, max(ks), temperature=temperature, seed=seed, n_boot=n_boot)
    results = {}
    for k in ks:
        accepted = [min(a, k) for a in top["accepted"]]
        rates = [a / k for a in accepted]
        low, high = bootstrap_ci(rates, n_boot=n_boot, seed=seed)
        results[k] = {"draft": top["draft"], "k": k, "temperature": temperature, "n_prompts": len(rates),
                      "alpha": sum(rates) / len(rates) if rates else float("nan"), "ci_low": low, "ci_high": high,
                      "accepted": accepted}
    return results


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float], n_boot: int = 2000, seed: int = 0,
             level: float = 0.95) -> tuple[float, float, float]:
    """mean(numerator) / mean(denominator) with a paired percentile-bootstrap CI (the prompts are
    resampled jointly); inf where only the denominator is 0, NaN where both are."""
    import numpy as np
    a, b = np.asarray(numerator, float), np.asarray(denominator, float)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    top, bottom = a[idx].mean(1), b[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.where(bottom > 0, top / bottom, np.where(top > 0, np.inf, np.nan))
        point = a.mean() / b.mean() if b.mean() > 0 else (np.inf if a.mean() > 0 else np.nan)
    tail = (1 - level) / 2
    if np.isnan(boot).all():
        return float(point), float("nan"), float("nan")
    return (float(point), float(np.nanquantile(boot, tail, method="inverted_cdf")),
            float(np.nanquantile(boot, 1 - tail, method="inverted_cdf")))

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
# 7. The book's data: shipped evaluation text and prompts, the paper's reference numbers, and the
#    setup and table style every chapter notebook shares
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



def book_setup(output_dir: str | os.PathLike = "book/generated/results", seed: int = 0, threads: int = 1) -> Path:
    """What every chapter notebook does first: transformers quiet in the page (no loading bars or
    kernel-fallback notices), torch seeded and on ``threads`` CPU threads, the book's seaborn theme.
    Returns the CSV folder, created. (seaborn is a book dependency, imported only here.)"""
    import seaborn as sns
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    sns.set_theme(style="whitegrid", context="notebook", font_scale=1.1, rc={"figure.dpi": 150})
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


BOOK_TABLE_STYLE = [  # readable tables in the book: padding, rules, a caption above
    {"selector": "", "props": "border-collapse: collapse; margin: 0.4em 0 1.2em 0; font-size: 0.88em;"},
    {"selector": "caption", "props": "caption-side: top; text-align: left; font-weight: 600; padding: 0 0 0.4em 0;"},
    {"selector": "th", "props": "text-align: left; padding: 4px 10px; border-bottom: 2px solid #999; vertical-align: bottom;"},
    {"selector": "td", "props": "text-align: left; padding: 3px 10px; border-bottom: 1px solid #ddd; vertical-align: top;"},
]


def show_table(styler) -> None:
    """Display a pandas Styler in the book's table style: short cells never wrap (numbers with their
    CIs stay on one line)."""
    from IPython.display import display
    styler = styler.map(lambda v: "white-space: nowrap;" if len(str(v)) <= 28 else "")
    display(styler.set_table_styles(BOOK_TABLE_STYLE, overwrite=False))

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
