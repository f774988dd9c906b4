"""Programmatic dependent launch changes when kernels start, never what they compute (GPU).

With PDL a kernel may start before the previous one has finished and waits for it in
``gdc_wait`` (lil_sparse/kernels/pdl.py). The same requests through an engine with PDL and one
without, both under CUDA graphs (one-row steps run the GEMV, the Triton decode and its merge,
the norm and the RoPE + append kernels, all launched with PDL), must give the same tokens and
every step's logits bit for bit: a kernel that read its input before the wait would race.
"""

from __future__ import annotations

import pytest
import torch

from lil_sparse.kernels import pdl
from lil_sparse.options import RequestOptions, StoppingOptions
from tests.gpu.test_flashinfer_engine import make_engine, record, recorded_rows, requests

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")


@pytest.mark.parametrize("policy", ["full", "quest", "infllm", "h2o"])
def test_pdl_steps_equal_plain_launches(policy, tiny_gqa2_dir, monkeypatch):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9.0")
    prompts, options = requests(policy, max_new=24)
    # Requests end at 24, 14 and 6 tokens: the batch shrinks to one row, which runs the GEMVs.
    options = [
        RequestOptions(stopping=StoppingOptions(max_new_tokens=n, ignore_eos=True), sparse=o.sparse)
        for n, o in zip((24, 14, 6), options, strict=True)
    ]
    with_pdl = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=True)
    pdl_logits = record(with_pdl)
    expected = with_pdl.generate(prompts, options)
    with_pdl.close()
    monkeypatch.setattr(pdl, "ENABLED", False)
    plain = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=True)
    plain_logits = record(plain)
    got = plain.generate(prompts, options)
    plain.close()
    assert recorded_rows(pdl_logits) == recorded_rows(plain_logits) == 24 + 14 + 6
    for want, have in zip(expected, got, strict=True):
        assert have.output_token_ids == want.output_token_ids
    assert all(torch.equal(a, b) for a, b in zip(pdl_logits.logits, plain_logits.logits, strict=True))
