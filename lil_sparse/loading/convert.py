"""Convert a GGUF file to a Hugging Face folder (bf16 safetensors) that loads in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from lil_sparse.loading.gguf_metadata import GGUFMetadata
from lil_sparse.loading.gguf_model import config_from_gguf, gguf_state_dict
from lil_sparse.loading.gguf_tokenizer import tokenizer_from_gguf
from lil_sparse.loading.loader import resolve_source


def convert_gguf(source: str | Path, outdir: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``model.safetensors``, ``config.json``, ``generation_config.json`` and the tokenizer
    files (``tokenizer.json``, ``tokenizer_config.json`` with the chat template) to ``outdir``.

    ``source`` is a .gguf path or a known model name. The folder loads with
    :func:`lil_sparse.loading.load_model` and with transformers' ``AutoModelForCausalLM``.
    """
    path, _ = resolve_source(source)
    if path.is_dir():
        raise ValueError(f"source: {path} is already a model folder; convert takes a .gguf file")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = GGUFMetadata.open(path)
    tokenizer = tokenizer_from_gguf(metadata, path)
    config = config_from_gguf(metadata, eos_token_ids=tuple(sorted(tokenizer.eos_token_ids)))
    tensors = {
        name: tensor.contiguous()
        for name, tensor in gguf_state_dict(metadata, config, dtype, "cpu")
        if not (config.tie_word_embeddings and name == "lm_head.weight")
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    hf_config = config.to_hf_dict() | {"torch_dtype": str(dtype).removeprefix("torch.")}
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    generation_config = {"bos_token_id": config.bos_token_id, "eos_token_id": list(config.eos_token_ids)}
    (out / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
    tokenizer.save(out)
    return out
