"""The all-greedy step's record written into pinned host memory by the argmax's kernel
(zero-copy, :meth:`lil_sparse.sampling.Sampler.sample_record`): the H200 lets kernels write
pinned memory, and an engine taking its tokens that way streams exactly the tokens and
log-probabilities of one that copies them, for every policy and a mixed batch, eagerly and
with CUDA graphs.
"""

from __future__ import annotations

import pytest
import torch
from gpu_engine import gpu_engine

from lil_sparse.kernels.row_argmax import greedy_record, greedy_record_reference, kernel_writes_pinned
from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions, StoppingOptions

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")

PROMPT = [(3 + 7 * i) % 250 for i in range(40)]


def test_the_argmax_writes_a_pinned_record_as_it_writes_a_device_one():
    assert kernel_writes_pinned(torch.device("cuda"))
    for rows, vocab in ((1, 49152), (8, 151936), (3, 1000)):
        logits = torch.randn(rows, vocab, device="cuda") * 4
        host = torch.full((2, rows), float("nan"), dtype=torch.float64, pin_memory=True)
        token, record = greedy_record(logits, out=host)
        assert record is host
        torch.cuda.synchronize()
        want_token, want_record = greedy_record(logits)
        assert torch.equal(token, want_token) and torch.equal(host, want_record.cpu())
        reference_token, reference = greedy_record_reference(logits)
        assert torch.equal(token, reference_token)
        torch.testing.assert_close(host, reference.cpu(), rtol=1e-6, atol=1e-6)


def events_of(engine, prompts, options):
    ids = [engine.add_request(p, o) for p, o in zip(prompts, options, strict=True)]
    streamed = {i: ([], []) for i in ids}
    while engine.has_unfinished():
        for event in engine.step():
            streamed[event.request_id][0].extend(event.token_ids)
            streamed[event.request_id][1].extend(event.logprobs)
    return [streamed[i] for i in ids]


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_an_engine_taking_its_tokens_zero_copy_streams_what_a_copying_one_does(tiny_gqa2_dir, cuda_graphs):
    zero_copy = gpu_engine(tiny_gqa2_dir, cuda_graphs=cuda_graphs)
    copying = gpu_engine(tiny_gqa2_dir, cuda_graphs=cuda_graphs)
    copying.step_sampler.sampler.writes_host.clear()  # the record on the device, then a copy
    try:
        assert zero_copy.step_sampler.sampler.writes_host == {torch.device("cuda", 0)}
        policies = list(POLICY_NAMES)
        options = [
            RequestOptions(
                stopping=StoppingOptions(max_new_tokens=20, ignore_eos=True),
                sparse=SparseOptions(policy=policy, budget_tokens=32, dense_layers=1),
            )
            for policy in policies
        ]
        prompts = [PROMPT * 2] * len(policies)
        got = events_of(zero_copy, prompts, options)  # one mixed batch of every policy
        want = events_of(copying, prompts, options)
        assert got == want
        assert all(len(tokens) == 20 for tokens, _ in got)
    finally:
        zero_copy.close()
        copying.close()
