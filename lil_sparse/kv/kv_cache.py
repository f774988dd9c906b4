"""KV page storage and the per-page metadata the selection policies read.

Layout follows FlashInfer's "HND" paged layout with one head per page:
``k[layer]`` and ``v[layer]`` are ``[num_pages, 1, page_size, head_dim]``. Metadata, updated as
tokens are written (all post-RoPE keys):

- ``key_bounds[layer]: [num_pages, 2, head_dim]`` in the cache dtype: element-wise key minimum
  (``[:, 0]``) and maximum (``[:, 1]``) of each page (Quest). One tensor, so that Quest reads
  both with one gather and scores them with one matmul; in the cache dtype, so that on the GPU
  it adds 2/16 of a page's K+V bytes rather than 4/16 (as Quest's own fp16 metadata).
- ``key_sum[layer]: [num_pages, head_dim] float32``: sum of the page's keys, the exact running
  total the next bullet is rounded from.
- ``key_mean[layer]: [num_pages, head_dim]`` in the cache dtype: ``key_sum * (1 / page_size)``
  rounded once, rewritten with every key; for a full page it is its mean key, InfLLM's
  representative (InfLLM keeps its representative keys in the model dtype too). Selection reads
  only this: on the GPU half the bytes of the fp32 sum in every layer.
- ``attention_mass: [num_pages] float32``: attention probability the page received, summed over
  layers, query heads of the group and decode steps (H2O).

K, V and the key metadata have one page more than ``num_pages``: ``scratch_page``
(``== num_pages``), which no sequence ever holds. Padding rows of a decode step (batch sizes
padded to a CUDA-graph bucket) write and attend it, so they never touch a real page.
"""

from __future__ import annotations

import torch

from lil_sparse.kernels import fused_selection_enabled
from lil_sparse.kv.key_metadata import KeyMetadata


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_pages: int,
        page_size: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        stored = num_pages + 1  # the last one is the scratch page
        shape = (num_layers, stored, 1, page_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        meta_shape = (num_layers, stored, head_dim)
        self.key_bounds = torch.empty(num_layers, stored, 2, head_dim, dtype=dtype, device=device)
        self.key_bounds[:, :, 0] = float("inf")
        self.key_bounds[:, :, 1] = float("-inf")
        # The bounds of an empty page, built once: reset_pages must not copy from the host.
        self._empty_bounds = self.key_bounds[0, 0].clone()  # [2, D]
        self.key_sum = torch.zeros(meta_shape, dtype=torch.float32, device=device)
        self.key_mean = torch.zeros(meta_shape, dtype=dtype, device=device)
        # Only H2O rows add mass, and padding rows are never H2O rows: no scratch entry.
        self.attention_mass = torch.zeros(num_pages, dtype=torch.float32, device=device)
        self.scratch_page = num_pages
        self.page_size = page_size
        self.head_dim = head_dim
        self.num_pages = num_pages

    @property
    def key_min(self) -> torch.Tensor:
        """``[layers, num_pages, head_dim]`` view of the per-page key minimum."""
        return self.key_bounds[:, :, 0]

    @property
    def key_max(self) -> torch.Tensor:
        """``[layers, num_pages, head_dim]`` view of the per-page key maximum."""
        return self.key_bounds[:, :, 1]

    def reset_pages(self, pages: torch.Tensor) -> None:
        """Clear the metadata of freshly (re)assigned pages. ``pages: [n] int64``."""
        self.key_bounds[:, pages] = self._empty_bounds
        self.key_sum.index_fill_(1, pages, 0.0)  # a scalar fill: no host-to-device copy
        self.key_mean.index_fill_(1, pages, 0.0)
        self.attention_mass.index_fill_(0, pages, 0.0)

    def poison_pages(self, pages: torch.Tensor) -> None:
        """Debug mode: set every key of ``pages`` (``[n] int64``) to NaN in every layer.

        A decode step that attends a slot nothing wrote since then scores NaN against it, and the
        softmax spreads the NaN to the whole row's output: the logits become NaN. Slots a step
        masks out (beyond ``last_page_len``) are filled with ``-inf`` before the softmax and stay
        harmless. Values are left alone: the reference backend multiplies masked slots by a
        probability of exactly 0, and ``0 * NaN`` would poison rows that read nothing wrong.
        """
        self.k[:, pages] = float("nan")

    def write(
        self,
        layer: int,
        slots: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        distinct_pages: bool = False,
        update_metadata: bool = True,
    ) -> None:
        """Store keys/values and fold them into the page metadata.

        ``slots: [T, H] int64`` flat token slots (``page * page_size + offset``) per token and KV
        head; ``k, v: [T, H, head_dim]``. ``distinct_pages`` promises that no two entries share a
        page (a decode step writes one token per row), which allows plain gathers instead of
        scatter reductions. ``update_metadata=False`` skips the key bounds, sums and means: a step whose
        requests never read them (no Quest or InfLLM request) saves those kernels, and pages only
        ever hold one request's tokens, so nobody else misses the update. With distinct pages on
        CUDA all of it is one kernel (:func:`lil_sparse.kernels.kv_append.append_decode_kv`); the
        code below is its reference.
        """
        if distinct_pages and fused_selection_enabled(k, self.head_dim):  # one Triton kernel on CUDA
            from lil_sparse.kernels.kv_append import append_decode_kv

            append_decode_kv(
                self.k[layer], self.v[layer], self._metadata(layer, update_metadata), slots, k, v
            )
            return
        flat_slots = slots.reshape(-1)
        k_flat = k.reshape(-1, self.head_dim)
        self.k[layer].view(-1, self.head_dim).index_copy_(0, flat_slots, k_flat.to(self.k.dtype))
        self.v[layer].view(-1, self.head_dim).index_copy_(
            0, flat_slots, v.reshape(-1, self.head_dim).to(self.v.dtype)
        )
        if not update_metadata:
            return
        pages = flat_slots // self.page_size
        keys = k_flat.to(self.key_bounds.dtype)
        bounds = self.key_bounds[layer]  # [P, 2, D]
        if distinct_pages:
            current = bounds[pages]  # [N, 2, D]
            bounds[pages] = torch.stack(
                (torch.minimum(current[:, 0], keys), torch.maximum(current[:, 1], keys)), dim=1
            )
        else:
            index = pages.unsqueeze(1).expand(-1, self.head_dim).contiguous()
            bounds[:, 0].scatter_reduce_(0, index, keys, reduce="amin")
            bounds[:, 1].scatter_reduce_(0, index, keys, reduce="amax")
        key_sum = self.key_sum[layer]
        key_sum.index_add_(0, pages, k_flat.float())
        self.key_mean[layer][pages] = (key_sum[pages] * (1.0 / self.page_size)).to(self.key_mean.dtype)

    def _metadata(self, layer: int, update: bool) -> KeyMetadata | None:
        """The metadata one layer's append kernels update, or None to update none."""
        if not update:
            return None
        return KeyMetadata(self.key_bounds[layer], self.key_sum[layer], self.key_mean[layer])

    def write_rotated(
        self,
        layer: int,
        slots: torch.Tensor,
        qk: torch.Tensor,
        q_heads: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        v: torch.Tensor,
        update_metadata: bool = True,
    ) -> torch.Tensor:
        """RoPE of a decode step's pre-RoPE ``qk: [T, Hq + Hk, D]`` (heads and dims contiguous),
        then :meth:`write` of the rotated keys and ``v`` (``distinct_pages``); returns ``q: [T, Hq,
        D]``. ``cos, sin: [T, D // 2] float32``. Where :meth:`write` runs one kernel this is one
        kernel too (:mod:`lil_sparse.kernels.rotary_append`); otherwise ``rotary_qk`` then
        :meth:`write`, which that kernel equals bit for bit."""
        if fused_selection_enabled(qk, self.head_dim):
            from lil_sparse.kernels.rotary_append import rotary_append_decode_kv

            metadata = self._metadata(layer, update_metadata)
            return rotary_append_decode_kv(
                qk, q_heads, cos, sin, v, self.k[layer], self.v[layer], metadata, slots
            )
        from lil_sparse.kernels.fused_layers import rotary_qk

        q, k = rotary_qk(qk, q_heads, cos, sin)
        self.write(layer, slots, k, v, distinct_pages=True, update_metadata=update_metadata)
        return q

    def page_bytes(self) -> int:
        """Bytes of K and V one page takes across all layers."""
        per_layer = self.page_size * self.head_dim * self.k.element_size() * 2
        return per_layer * self.k.shape[0]
