"""Paged KV cache: page pool, block table and page storage with policy metadata."""

from lil_sparse.kv.block_table import BlockTable
from lil_sparse.kv.kv_cache import KVCache
from lil_sparse.kv.page_pool import OutOfPagesError, PagePool

__all__ = ["BlockTable", "KVCache", "OutOfPagesError", "PagePool"]
