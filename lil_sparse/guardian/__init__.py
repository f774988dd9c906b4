"""Guardian early stop: compress the sequence every few tokens, stop when it stops growing."""

from lil_sparse.guardian.guardian import ZLIB_LEVEL, Guardian, StreamCompressedSize, zlib_compressed_size
from lil_sparse.guardian.pool import GuardianPool
from lil_sparse.guardian.replay import replay, replay_tokens
from lil_sparse.guardian.sequence import sequence_bytes

__all__ = [
    "ZLIB_LEVEL",
    "Guardian",
    "GuardianPool",
    "StreamCompressedSize",
    "replay",
    "replay_tokens",
    "sequence_bytes",
    "zlib_compressed_size",
]
