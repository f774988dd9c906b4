"""After the start-up warm-up, a lone request that decodes past 256 pages (4096 tokens: widths no
warm-up request ran at) builds no Triton kernel: the selection kernels were run at every width
(lil_sparse/engine/selection_compile.py) and the Triton decode's every tile when its slot was
made (FastDecode.compile). Before, the first request to cross 4096 or 8192 tokens waited for a
token while those kernels compiled: 0.24-0.37 s under Quest, 0.57-0.80 s under InfLLM (two
slow steps; H200, 2026-12-01)."""

from __future__ import annotations

import pytest
from gpu_engine import gpu_engine

from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions
from lil_sparse.testing.tiny_model import build_tiny_model

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")


def compiled(kernel) -> set[str]:
    """The specializations Triton built for ``kernel`` in this process (its in-memory caches'
    keys: the constexprs and the arguments' specialization)."""
    caches = getattr(kernel, "device_caches", None)
    if caches is None:
        pytest.skip("this Triton keeps no JITFunction.device_caches")
    return {str(key) for entry in caches.values() for key in entry[0]}


def test_a_request_crossing_into_a_wider_width_builds_no_kernel(tmp_path):
    from lil_sparse.kernels.page_scores import _page_scores
    from lil_sparse.kernels.page_select import _select_pages
    from lil_sparse.kernels.paged_decode import _merge_partials, _paged_decode

    model = build_tiny_model(
        tmp_path,
        architecture="llama",
        hidden_size=256,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=8192,
    )
    engine = gpu_engine(model, warm_up=True, kv_cache_tokens=24576)
    try:
        report = engine.warm_up_report
        assert report is not None and report.widths[-1] == 256
        assert report.selection_widths == (8, 16, 32, 64, 128, 256, 512)  # 8192 tokens: 512 pages
        kernels = (_select_pages, _page_scores, _paged_decode, _merge_partials)
        before = [compiled(kernel) for kernel in kernels]
        prompt = [(3 + 7 * i) % 250 for i in range(4090)]
        for policy in ("quest", "infllm", "full", "h2o"):  # 4090 + 12 tokens: 257 pages
            options = RequestOptions(
                stopping=StoppingOptions(max_new_tokens=12, ignore_eos=True),
                sparse=SparseOptions(policy=policy, budget_tokens=1024, dense_layers=0),
            )
            (result,) = engine.generate([prompt], [options])
            assert len(result.output_token_ids) == 12, policy
        after = [compiled(kernel) for kernel in kernels]
        pairs = zip(kernels, after, before, strict=True)
        built = {kernel.fn.__name__: sorted(now - then) for kernel, now, then in pairs}
        if any(built.values()):
            warmed = zip(built, before, strict=True)
            near = {name: [key for key in then if "512" in key] for name, then in warmed}
            pytest.fail(f"built after the warm-up: {built}; warmed keys at 512: {near}", pytrace=False)
    finally:
        engine.close()
