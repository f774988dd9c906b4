"""Keep a converted copy of each known model's GGUF, so only the first load pays for the GGUF.

Reading a GGUF is slow in Python (the gguf reader walks every metadata field; SmolLM2's
tokenizer alone is 49k strings) and dequantising costs more. The first load of a known model
writes a safetensors folder in the requested dtype under ``<cache>/converted/`` (the same folder
``lil-sparse convert`` writes); later loads read that folder. The folder name carries the GGUF's
sha256 (verified at fetch), so a re-fetched model never meets a stale conversion. Only known
models in the cache are converted: they are verified and the cache is ours to write. Set
``LIL_SPARSE_CONVERTED_CACHE=0`` to turn it off. A cache that cannot be written (a read-only
volume) only costs the speed-up.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lil_sparse.loading.fetcher import KNOWN_MODELS, KnownModel, cache_dir

logger = logging.getLogger(__name__)
CONVERTED_CACHE_ENV = "LIL_SPARSE_CONVERTED_CACHE"


def _known_model_of(gguf: Path) -> KnownModel | None:
    """The known model whose cached GGUF ``gguf`` is, else None."""
    cache = cache_dir().resolve()
    for model in KNOWN_MODELS:
        if gguf.resolve() == cache / model.filename:
            return model
    return None


def converted_folder_path(model: KnownModel, dtype: torch.dtype) -> Path:
    dtype_name = str(dtype).removeprefix("torch.")
    return cache_dir() / "converted" / f"{model.name}-{model.sha256[:12]}-{dtype_name}"


def converted_folder(gguf: Path, dtype: torch.dtype) -> Path | None:
    """The converted folder for ``gguf`` in ``dtype``, written on first use; None if not cached."""
    if os.environ.get(CONVERTED_CACHE_ENV, "1") == "0":
        return None
    model = _known_model_of(gguf)
    if model is None:
        return None
    folder = converted_folder_path(model, dtype)
    if (folder / "model.safetensors").is_file():
        return folder
    from lil_sparse.loading.convert import convert_gguf

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".converting-"))
    except OSError as error:
        logger.warning("not caching the converted model (%s); loading the GGUF directly", error)
        return None
    try:
        convert_gguf(gguf, staging, dtype=dtype)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is readable like the GGUF
        os.replace(staging, folder)  # atomic: a reader sees a whole folder or none
    except OSError as error:
        if not (folder / "model.safetensors").is_file():  # no concurrent loader finished it first
            logger.warning("not caching the converted model (%s); loading the GGUF directly", error)
            return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("cached the converted %s in %s", model.name, folder)
    return folder
