"""One-row decode steps project, rotate and append K/V in the QKV GEMV's epilogue
(:func:`lil_sparse.kernels.linear.rmsnorm_qkv_rope_append`, through
:meth:`DecodeAttention.append_target`): the engine's logits equal, bit for bit, those of the
same steps without that seam (the GEMV, then RoPE and the K/V append), eager and replayed."""

from __future__ import annotations

import pytest
import torch
from gpu_engine import gpu_engine

from lil_sparse.engine.step_attention import DecodeAttention
from lil_sparse.kernels import linear
from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("flashinfer")

MAX_NEW = 20


def run_one_request(model_dir, policy: str, cuda_graphs: bool) -> tuple[list[int], list[torch.Tensor]]:
    """One request alone (every decode step one row): its tokens and every step's logits."""
    engine = gpu_engine(model_dir, cuda_graphs=cuda_graphs)
    logits: list[torch.Tensor] = []
    decode = engine.runner.decode

    def recording_decode(seqs, **kwargs):
        out = decode(seqs, **kwargs)
        logits.append(out.float().clone())
        return out

    engine.runner.decode = recording_decode  # type: ignore[method-assign]
    prompt = torch.randint(3, 384, (90,), generator=torch.Generator().manual_seed(9)).tolist()
    options = RequestOptions(
        stopping=StoppingOptions(max_new_tokens=MAX_NEW, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=48, sink_tokens=16, dense_layers=1),
    )
    (report,) = engine.generate([prompt], [options])
    engine.close()
    return report.output_token_ids, logits


@pytest.mark.parametrize("cuda_graphs", [False, True])
@pytest.mark.parametrize("policy", ["full", "sink", "h2o"])  # no key metadata: the seam is open
def test_one_row_steps_equal_the_gemv_then_rope_and_append(policy, cuda_graphs, tiny_gqa8_dir, monkeypatch):
    calls = []
    fused_kernel = linear.gemv_rmsnorm_rope_append

    def counted(*args, **kwargs):
        calls.append(1)
        return fused_kernel(*args, **kwargs)

    monkeypatch.setattr(linear, "gemv_rmsnorm_rope_append", counted)
    fused_tokens, fused_logits = run_one_request(tiny_gqa8_dir, policy, cuda_graphs)
    assert calls  # the one-row steps took the epilogue
    monkeypatch.delattr(DecodeAttention, "append_target")
    calls.clear()
    apart_tokens, apart_logits = run_one_request(tiny_gqa8_dir, policy, cuda_graphs)
    assert not calls
    assert len(fused_tokens) == MAX_NEW and fused_tokens == apart_tokens
    assert len(fused_logits) == len(apart_logits) > 0
    assert all(torch.equal(a, b) for a, b in zip(fused_logits, apart_logits, strict=True))
