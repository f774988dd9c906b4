"""The bytes Guardian compresses: one helper so the engine, replay and tests agree."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from lil_sparse.options import GuardianSource

# A byte-level tokenizer decodes a token prefix that ends inside a multi-byte UTF-8 character to
# U+FFFD; the next token rewrites it into the real character. Dropping trailing U+FFFD keeps
# every checked sequence a prefix of the later ones (the incremental compressor needs that) and
# makes the bytes independent of where a check happens to fall inside a character.
_REPLACEMENT_CHARACTER = "\ufffd"


def sequence_bytes(
    prompt_text: str,
    output_text: str,
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
    source: GuardianSource,
) -> bytes:
    """The whole sequence so far (prompt then output) as Guardian sees it.

    ``source="text"``: ``prompt_text + output_text`` as UTF-8, without trailing U+FFFD
    characters (an unfinished multi-byte character). ``source="token_ids"``: the ids of
    ``prompt_ids + output_ids`` as little-endian uint32, 4 bytes per token. The unused
    arguments of the other source are ignored.
    """
    if source == "text":
        return (prompt_text + output_text.rstrip(_REPLACEMENT_CHARACTER)).encode("utf-8")
    if source == "token_ids":
        ids = [*prompt_ids, *output_ids]
        if any(not 0 <= token_id < 2**32 for token_id in ids):
            raise ValueError("token_ids: every token id must be in [0, 2^32)")
        return struct.pack(f"<{len(ids)}I", *ids)
    raise ValueError(f"source: must be 'text' or 'token_ids', got {source!r}")
