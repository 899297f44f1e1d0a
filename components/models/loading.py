"""Load or build models and tokenizers; save them as `save_pretrained` directories (safetensors).

A `name_or_path` is, in order: an s3:// prefix (downloaded to the cache), an existing local directory, a `.gguf`
file (imported once into the cache as a save_pretrained dir), a path-looking string that does not exist (an error
naming the field), or a Hugging Face hub id.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification,
                          AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedModel)

from components.errors import ModelLoadError
from components.io.s3 import download_dir
from components.models.config import ArchSpec, ModelSpec
from components.models.precision import fp32_head


def resolve(name_or_path: str, field: str, cache_dir: str | Path = ".rlhf/cache") -> str:
    """Return a local directory or a hub id for `name_or_path`; `field` names the config key for errors."""
    if name_or_path.startswith("s3://"):
        return str(download_dir(name_or_path, cache_dir))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file() and path.suffix == ".gguf":
        return str(_imported_gguf(path, Path(cache_dir)))
    if path.exists():
        raise ModelLoadError(f"{field}: {name_or_path} is a file; expected a save_pretrained directory")
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"{field}: model directory {name_or_path} does not exist")
    return name_or_path  # a hub id such as "gpt2" or "org/name"


def _imported_gguf(path: Path, cache_dir: Path) -> Path:
    """The save_pretrained dir imported from a GGUF file, keyed by its name and size (imported on first use)."""
    from components.models.gguf import import_gguf

    out = cache_dir / "gguf" / f"{path.stem}-{path.stat().st_size}"
    if not (out / "config.json").is_file():
        import_gguf(path, out)
    return out


def load_tokenizer(name_or_path: str, field: str = "tokenizer", trust_remote_code: bool = False,
                   cache_dir: str | Path = ".rlhf/cache"):
    """AutoTokenizer with a pad token guaranteed (falls back to EOS, as TRL does)."""
    where = resolve(name_or_path, field, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"{field}: cannot load a tokenizer from {name_or_path!r}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _arch_config(arch: ArchSpec, tokenizer, num_labels: int | None):
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if num_labels is not None:
        ids["num_labels"] = num_labels
    inner = arch.intermediate_size or 4 * arch.hidden_size
    if arch.type == "gpt2":
        return GPT2Config(n_layer=arch.n_layer, n_embd=arch.hidden_size, n_head=arch.n_head,
                          n_positions=arch.max_positions, n_inner=inner, resid_pdrop=arch.dropout,
                          embd_pdrop=arch.dropout, attn_pdrop=arch.dropout, **ids)
    return LlamaConfig(num_hidden_layers=arch.n_layer, hidden_size=arch.hidden_size, num_attention_heads=arch.n_head,
                       num_key_value_heads=arch.n_head, max_position_embeddings=arch.max_positions,
                       intermediate_size=inner, attention_dropout=arch.dropout, **ids)


def _from_pretrained(auto_cls, spec: ModelSpec, field: str, cache_dir, **kwargs) -> PreTrainedModel:
    """Weights from safetensors files only: a pickled `pytorch_model.bin` can run code when loaded."""
    where = resolve(spec.name_or_path, f"{field}.name_or_path", cache_dir)
    try:
        return auto_cls.from_pretrained(where, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
                                        dtype=torch.float32, use_safetensors=True, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"{field}.name_or_path: cannot load {spec.name_or_path!r}: {exc}") from exc


def _fit_vocab(model: PreTrainedModel, tokenizer, spec: ModelSpec, field: str) -> PreTrainedModel:
    """A pretrained model keeps its embeddings: a tokenizer with more tokens than the model has rows is an error
    unless `resize_embeddings` is set (new rows are random, so only training can give them meaning)."""
    rows = model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):
        if not spec.resize_embeddings:
            raise ModelLoadError(f"{field}: the tokenizer has {len(tokenizer)} tokens but {spec.name_or_path!r} has "
                                 f"{rows} embedding rows; use the model's own tokenizer, or set "
                                 f"{field}.resize_embeddings: true to add (randomly initialised) rows")
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def causal_lm(spec: ModelSpec, tokenizer, field: str, cache_dir: str | Path = ".rlhf/cache") -> PreTrainedModel:
    """A causal LM loaded from `spec.name_or_path` or built from `spec.arch` (random init; seed first)."""
    if spec.arch is not None:
        return fp32_heads(AutoModelForCausalLM.from_config(_arch_config(spec.arch, tokenizer, None)))
    return fp32_heads(_fit_vocab(_from_pretrained(AutoModelForCausalLM, spec, field, cache_dir), tokenizer, spec, field))


def reward_model(spec: ModelSpec, tokenizer, field: str, cache_dir: str | Path = ".rlhf/cache") -> PreTrainedModel:
    """`AutoModelForSequenceClassification(num_labels=1)` to train on any backbone; a causal-LM dir keeps its
    trunk and gets a new scalar head."""
    if spec.arch is not None:
        return fp32_heads(AutoModelForSequenceClassification.from_config(_arch_config(spec.arch, tokenizer, 1)))
    model = _from_pretrained(AutoModelForSequenceClassification, spec, field, cache_dir, num_labels=1)
    return fp32_heads(_fit_vocab(model, tokenizer, spec, field))


def scorer_model(spec: ModelSpec, field: str, cache_dir: str | Path = ".rlhf/cache") -> tuple[PreTrainedModel, object]:
    """A trained sequence classifier to score with, as it was saved (its own labels), and its own tokenizer.
    A checkpoint that has no classification head (a plain causal LM) is an error, not a random head."""
    where = resolve(spec.name_or_path, f"{field}.name_or_path", cache_dir)
    from transformers import AutoConfig

    try:
        archs = AutoConfig.from_pretrained(where, revision=spec.revision,
                                           trust_remote_code=spec.trust_remote_code).architectures or []
    except Exception as exc:
        raise ModelLoadError(f"{field}.name_or_path: cannot load {spec.name_or_path!r}: {exc}") from exc
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelLoadError(f"{field}: {spec.name_or_path!r} is a {archs[0]}, not a sequence classifier; "
                             "train a reward model on it first (the reward stage)")
    tokenizer = load_tokenizer(where, field=field, trust_remote_code=spec.trust_remote_code, cache_dir=cache_dir)
    model = _from_pretrained(AutoModelForSequenceClassification, spec, field, cache_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    return fp32_heads(model), tokenizer


def token_value_model(spec: ModelSpec, tokenizer, field: str,
                      cache_dir: str | Path = ".rlhf/cache") -> PreTrainedModel:
    """A critic: `AutoModelForTokenClassification(num_labels=1)`, one value per position, on any backbone."""
    if spec.arch is not None:
        return fp32_heads(AutoModelForTokenClassification.from_config(_arch_config(spec.arch, tokenizer, 1)))
    model = _from_pretrained(AutoModelForTokenClassification, spec, field, cache_dir, num_labels=1)
    return fp32_heads(_fit_vocab(model, tokenizer, spec, field))


def fp32_heads(model: PreTrainedModel) -> PreTrainedModel:
    """The model with its output layer (LM head, or score / classifier head) computed in fp32 under any
    precision (components/models/precision.py); a no-op on the numbers in fp32."""
    fp32_head(model.get_output_embeddings())
    for name in ("score", "classifier"):
        fp32_head(getattr(model, name, None))
    return model


def context_length(model) -> int | None:
    """The longest sequence a model's positions cover, when its config says."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to 0 (as TRL does for RL): PPO's ratio needs the same function at rollout
    and update time."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def fused_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """Swap GPT-2's Python `gelu_new` (six elementwise ops) for torch's fused tanh GELU: the same formula,
    outputs equal to ~1e-6, and ~8% off a small model's forward+backward on CPU. The saved config is unchanged."""
    from transformers.activations import NewGELUActivation, PytorchGELUTanh

    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(parent, name, PytorchGELUTanh())
    return model


def save_pretrained(model: PreTrainedModel, tokenizer, out_dir: str | Path) -> None:
    """Write a HF directory loadable with `from_pretrained`: config, safetensors weights, tokenizer."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
