"""``load_model``: a Hugging Face folder, a GGUF file or a known model name -> a ready model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lil_sparse.loading.converted_cache import converted_folder
from lil_sparse.loading.fetcher import fetch_model, find_known_model
from lil_sparse.loading.gguf_metadata import GGUFMetadata
from lil_sparse.loading.gguf_model import config_from_gguf, gguf_state_dict
from lil_sparse.loading.gguf_tokenizer import tokenizer_from_gguf
from lil_sparse.loading.hf_folder import hf_state_dict, read_hf_config
from lil_sparse.loading.tokenizer import Tokenizer
from lil_sparse.loading.weights import build_model
from lil_sparse.models.config import ModelConfig
from lil_sparse.models.transformer import CausalLM


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model ready to run: weights in eval mode without grad, its config, tokenizer and a display name."""

    model: CausalLM
    config: ModelConfig
    tokenizer: Tokenizer
    name: str


def resolve_source(source: str | Path) -> tuple[Path, str]:
    """The folder or .gguf file ``source`` means, and the model's display name.

    A known model name (``smollm2``, ``qwen05``...) is fetched into the cache if missing.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path, path.resolve().name
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model: {path} is a file but not a .gguf; pass a model folder or a .gguf file")
        return path, path.stem
    known = find_known_model(str(source))
    if known is not None:
        return fetch_model(known.name), known.name
    raise ValueError(
        f"model: {source!r} is neither a model folder, a .gguf file nor a known model name "
        "(see `lil-sparse models list`)"
    )


def load_model(
    source: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a model and its tokenizer.

    ``source``: a Hugging Face folder (config.json, *.safetensors, tokenizer.json), a ``.gguf``
    file (dequantised to ``dtype``; seconds to tens of seconds; `lil-sparse convert` makes a folder
    that loads faster) or a known model name. A known model's GGUF is converted once and then
    loaded from the converted folder (see :mod:`lil_sparse.loading.converted_cache`).
    """
    path, name = resolve_source(source)
    if path.is_file():
        path = converted_folder(path, dtype) or path
    if path.is_dir():
        config = read_hf_config(path)
        tokenizer = Tokenizer.from_folder(path, extra_eos_token_ids=config.eos_token_ids)
        model = build_model(config, hf_state_dict(path, dtype, device))
    else:
        metadata = GGUFMetadata.open(path)
        tokenizer = tokenizer_from_gguf(metadata, path)
        config = config_from_gguf(metadata, eos_token_ids=tuple(sorted(tokenizer.eos_token_ids)))
        model = build_model(config, gguf_state_dict(metadata, config, dtype, device))
    return LoadedModel(model=model, config=config, tokenizer=tokenizer, name=name)
