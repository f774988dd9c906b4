"""Fast typed access to a GGUF file's key/value metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType


class GGUFMetadata:
    """The metadata of an open ``gguf.GGUFReader``.

    ``ReaderField.contents()`` converts element by element and takes seconds on a 150k-token
    vocabulary, so the big arrays (tokens, merges, token types) are read from the raw parts.
    """

    def __init__(self, reader: GGUFReader) -> None:
        self.reader = reader

    @staticmethod
    def open(path: str | Path) -> GGUFMetadata:
        return GGUFMetadata(GGUFReader(str(path), "r"))

    def __contains__(self, key: str) -> bool:
        return key in self.reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        """A scalar or string value (or a small array as a list); ``default`` when absent."""
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str) -> Any:
        if key not in self.reader.fields:
            raise ValueError(f"GGUF metadata: missing required key {key!r}")
        return self.get(key)

    def strings(self, key: str) -> list[str]:
        """An array of strings, e.g. ``tokenizer.ggml.tokens``."""
        field = self.reader.fields.get(key)
        if field is None or field.types[:2] != [GGUFValueType.ARRAY, GGUFValueType.STRING]:
            raise ValueError(f"GGUF metadata: {key!r} is missing or not an array of strings")
        return [bytes(field.parts[index]).decode("utf-8", errors="replace") for index in field.data]

    def ints(self, key: str) -> list[int]:
        """An array of integers, e.g. ``tokenizer.ggml.token_type``."""
        field = self.reader.fields.get(key)
        if field is None or field.types[0] != GGUFValueType.ARRAY:
            raise ValueError(f"GGUF metadata: {key!r} is missing or not an array")
        if not field.data:
            return []
        return np.concatenate([field.parts[index] for index in field.data]).astype(np.int64).tolist()
