"""Import a GGUF checkpoint (llama.cpp's format) as a plain `save_pretrained` directory.

transformers loads a GGUF file (dequantising its tensors with the `gguf` package) but refuses to save such a model.
So the dequantised weights are copied into a fresh model of the same config, which saves normally; a greedy
continuation of a probe prompt must come out the same from both before anything is written.
"""
from __future__ import annotations

from pathlib import Path

import torch

from components.errors import ModelLoadError
from components.io.atomic import atomic_dir

PROBE = [{"role": "user", "content": "Write one sentence about the sea."}]


def load_gguf(gguf_path: str | Path):
    """(model, tokenizer) from a .gguf file, fp32 weights. The tokenizer keeps the file's chat template."""
    path = Path(gguf_path)
    if not path.is_file():
        raise ModelLoadError(f"gguf file {gguf_path} does not exist")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except ImportError as exc:
        raise ModelLoadError(f"{gguf_path}: reading GGUF needs the `gguf` package (pip install gguf): {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(f"{gguf_path}: cannot load as a GGUF causal LM: {exc}") from exc
    return model.eval(), tokenizer


def plain_copy(model):
    """The same weights in a fresh transformers model (no GGUF quantization config), which `save_pretrained` accepts."""
    from transformers import AutoModelForCausalLM

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    fresh = AutoModelForCausalLM.from_config(type(model.config).from_dict(config), dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and fresh.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF weights do not fit the {type(fresh).__name__} config: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    if fresh.config.tie_word_embeddings:
        fresh.tie_weights()
    return fresh.eval()


@torch.no_grad()
def greedy(model, tokenizer, max_new_tokens: int = 16) -> list[int]:
    """Greedy continuation token ids of the probe prompt (templated when the tokenizer has a chat template)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)
    else:
        text = PROBE[0]["content"]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return out[0, ids.size(1):].tolist()


def import_gguf(gguf_path: str | Path, out_dir: str | Path) -> dict:
    """Write `out_dir` (config, model.safetensors, tokenizer with chat template) from a GGUF file, atomically.
    Returns what was checked: the architecture, parameter count and the probe's greedy tokens (equal in both)."""
    model, tokenizer = load_gguf(gguf_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    copy = plain_copy(model)
    expected, got = greedy(model, tokenizer), greedy(copy, tokenizer)
    if expected != got:
        raise ModelLoadError(f"{gguf_path}: the re-saved model's greedy output differs from the GGUF model's")
    with atomic_dir(out_dir) as tmp:
        copy.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return {"architecture": type(copy).__name__, "parameters": sum(p.numel() for p in copy.parameters()),
            "probe": tokenizer.decode(got)}
