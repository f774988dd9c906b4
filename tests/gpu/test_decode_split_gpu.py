"""Two FlashInfer calls for a step of very unequal rows (``lil_sparse.attention.decode_split``).

The split must not change what is attended: against the reference backend and against one call
the outputs agree within bf16 tolerance (the calls split each row's pages into other chunks, so
the floating-point sums differ), and the log-sum-exp H2O reads agrees too. In the engine, a
forced split replays under CUDA graphs bit for bit as it runs eagerly, and gives one call's tokens.
Run at once, the two calls equal the serial ones bit for bit, are parallel branches of a captured
graph, and an error in the first call still joins the second call's stream.
"""

from __future__ import annotations

import re

import pytest
import torch

from lil_sparse.attention import flashinfer_backend, flashinfer_decode_slot
from lil_sparse.attention.decode_split import choose_split
from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.attention.reference import ReferenceBackend
from tests.gpu.test_flashinfer_engine import make_engine, mixed_requests, record
from tests.gpu.test_flashinfer_layer import HEADS, make_backend, random_rows

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")


def mixed_rows(long_seqs: int, short_seqs: int, long_pages: int, short_pages: int):
    """A cache of ``long_seqs`` sequences of ``long_pages`` pages, then ``short_seqs`` of
    ``short_pages`` (HEADS rows each); returns (kv, page_ids [rows, long_pages], counts, last, q)."""
    rows = (long_seqs + short_seqs) * HEADS
    kv, table, last_len, q = random_rows(rows, long_pages, 4, 128, seed=3)
    counts = [long_pages] * (long_seqs * HEADS) + [short_pages] * (short_seqs * HEADS)
    page_ids = table.clone()
    short = slice(long_seqs * HEADS, rows)
    page_ids[short, short_pages - 1] = table[short, -1]  # the newest page (partial) last
    return kv, page_ids, counts, last_len, q


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    diff = (a.float() - b.float()).abs()
    assert diff.max().item() <= 3e-2
    assert (diff.norm() / b.float().norm()).item() <= 1e-2


def test_two_calls_attend_what_one_call_does():
    # 24 long sequences (48 rows of 513 pages) beside 96 short ones (192 rows of 33): as in the
    # 8B mixed batch, the rows fill FlashInfer's 264 work units, so one call cannot split the
    # long rows.
    kv, page_ids, counts, last_len, q = mixed_rows(24, 96, 513, 33)
    split_backend = make_backend(4, 128, tensor_cores=True)
    one_backend = make_backend(4, 128, tensor_cores=True, split_calls=False)
    layout = DecodeLayout.build(counts, last_len, tuple(last_len.tolist()))
    want_split = choose_split(counts, HEADS, split_backend.num_sms, max(128 // 16, 1))
    if want_split == 0:
        pytest.skip(f"{split_backend.num_sms} SMs: one call already balances these rows")
    assert want_split == 24 * HEADS  # the drop between the long and the short rows
    outs = {}
    for name, backend in (("split", split_backend), ("one", one_backend)):
        backend.begin_decode_step([layout])
        outs[name] = backend.decode_with_lse(0, q, kv.k[0], kv.v[0], page_ids, layout)
        assert backend.step_key([layout]) == ((want_split,) if name == "split" else (0,))
    ref = ReferenceBackend().decode(0, q, kv.k[0], kv.v[0], page_ids, layout)
    close(outs["split"][0], ref)
    close(outs["split"][0], outs["one"][0])
    split_lse, one_lse = outs["split"][1], outs["one"][1]
    assert split_lse is not None and one_lse is not None
    torch.testing.assert_close(split_lse, one_lse, rtol=1e-3, atol=1e-3)


def test_concurrent_calls_equal_serial_calls_bit_for_bit():
    # The same 48 long + 192 short rows. Run at once (the second call on the slot's lane, with a
    # float workspace of its own), each call runs the kernels it runs serially: outputs and lse
    # are equal bit for bit, eagerly and replayed in a CUDA graph with new queries. (Were the two
    # calls to share one float workspace, their split-k partial results would mix.)
    kv, page_ids, counts, last_len, q = mixed_rows(24, 96, 513, 33)
    layout = DecodeLayout.build(counts, last_len, tuple(last_len.tolist()))
    serial = make_backend(4, 128, tensor_cores=True, concurrent_split=False)
    concurrent = make_backend(4, 128, tensor_cores=True)
    for backend in (serial, concurrent):
        backend.begin_decode_step([layout])
    if serial.step_key([layout]) == (0,):
        pytest.skip(f"{serial.num_sms} SMs: one call already balances these rows")
    slot = concurrent._slot_of(layout)
    assert slot.lane is not None and serial._slot_of(layout).lane is None
    assert concurrent.step_key([layout]) == serial.step_key([layout])

    def run(backend, queries):
        return backend.decode_with_lse(0, queries, kv.k[0], kv.v[0], page_ids, layout)

    want_out, want_lse = run(serial, q)
    got_out, got_lse = run(concurrent, q)
    assert torch.equal(got_out, want_out) and torch.equal(got_lse, want_lse)
    # Under capture the lane becomes a branch of the graph.
    static_q = q.clone()
    run(concurrent, static_q)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out, graph_lse = run(concurrent, static_q)
    for seed in (1, 2):
        fresh = torch.randn(
            q.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)
        )
        static_q.copy_(fresh.to(q.dtype))
        graph.replay()
        want_out, want_lse = run(serial, static_q)
        assert torch.equal(graph_out, want_out) and torch.equal(graph_lse, want_lse)


def split_at_first_drop(counts, row_step, num_sms, min_chunk):
    """A split the cost model would not take on a tiny model: at the first drop in page count."""
    for row in range(row_step, len(counts), row_step):
        if counts[row] < counts[row - 1]:
            return row
    return 0


def test_forced_split_replays_bit_for_bit_and_attends_what_one_call_does(tiny_gqa8_dir, monkeypatch):
    one = make_engine(tiny_gqa8_dir, "flashinfer", cuda_graphs=True)
    one_logits = record(one)
    one.generate(*mixed_requests((40, 33, 20, 40, 28)))
    one.close()
    chosen = [logits.argmax(dim=-1).tolist() for logits in one_logits.logits]
    monkeypatch.setattr(flashinfer_backend, "choose_split", split_at_first_drop)
    # The tiny model's few short rows would all run the Triton decode, which never splits.
    from lil_sparse.kernels import fast_decode

    monkeypatch.setattr(fast_decode, "runs_triton", lambda *_args: False)
    eager = make_engine(tiny_gqa8_dir, "flashinfer", cuda_graphs=False)
    graphs = make_engine(tiny_gqa8_dir, "flashinfer", cuda_graphs=True)
    eager_logits, graph_logits = record(eager, chosen), record(graphs, chosen)
    expected = eager.generate(*mixed_requests((40, 33, 20, 40, 28)))
    got = graphs.generate(*mixed_requests((40, 33, 20, 40, 28)))
    runner_graphs = graphs.runner.graphs
    assert runner_graphs is not None and runner_graphs.replays > 0
    splits = {split for key in runner_graphs.captured for split in key[-1]}
    assert any(split > 0 for split in splits), "no captured step ran two calls"  # -1: Triton decode
    # Split eager and split graph: the same kernels on the same buffers, bit for bit.
    for a, b in zip(expected, got, strict=True):
        assert a.output_token_ids == b.output_token_ids
    assert all(torch.equal(a, b) for a, b in zip(eager_logits.logits, graph_logits.logits, strict=True))
    # Split against one call, fed the same tokens: other chunk sums, the same distribution
    # (selecting policies may flip a near-tied page on bf16 noise: >= 90% of rows, as in
    # test_flashinfer_engine).
    assert len(graph_logits.logits) == len(one_logits.logits)
    close_rows = total = 0
    for ours, theirs in zip(graph_logits.logits, one_logits.logits, strict=True):
        cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
        close_rows += int((cosine >= 0.999).sum())
        total += ours.shape[0]
    assert close_rows >= 0.9 * total
    eager.close()
    graphs.close()


def concurrent_split_case():
    """The concurrent backend planned for the 48 long + 192 short rows, its slot, and a runner."""
    kv, page_ids, counts, last_len, q = mixed_rows(24, 96, 513, 33)
    layout = DecodeLayout.build(counts, last_len, tuple(last_len.tolist()))
    backend = make_backend(4, 128, tensor_cores=True)
    backend.begin_decode_step([layout])
    if backend.step_key([layout]) == (0,):
        pytest.skip(f"{backend.num_sms} SMs: one call already balances these rows")

    def run(queries):
        return backend.decode_with_lse(0, queries, kv.k[0], kv.v[0], page_ids, layout)

    return backend._slot_of(layout), run, q


def dot_kernel_reach(path) -> tuple[list[tuple[str, str]], dict[str, set[str]]]:
    """(kernel nodes as (id, attributes), reachability: id -> every node after it) of a CUDA
    graph's DOT dump (cudaGraphDebugDotPrint, as ``CUDAGraph.debug_dump`` writes it: quoted node
    ids, each followed by its ``[...]`` attributes, and ``"a" -> "b"`` edges)."""
    text = path.read_text()
    starts = list(re.finditer(r'"(\w+)"\s*\[', text))
    nodes = [
        (match.group(1), text[match.end() : nxt.start() if nxt else len(text)])
        for match, nxt in zip(starts, [*starts[1:], None], strict=True)
    ]
    after: dict[str, set[str]] = {}
    for source, target in re.findall(r'"(\w+)"\s*->\s*"(\w+)"', text):
        after.setdefault(source, set()).add(target)
    reach: dict[str, set[str]] = {}

    def visit(node: str) -> set[str]:
        if node not in reach:
            reach[node] = set()
            for nxt in after.get(node, ()):
                reach[node] |= {nxt} | visit(nxt)
        return reach[node]

    for node, _ in nodes:
        visit(node)
    return nodes, reach


def test_a_captured_concurrent_split_runs_its_two_calls_as_parallel_branches(tmp_path):
    # In the captured graph the short rows' call must not wait for the long rows' call: no path
    # joins the two calls' attention kernels (FlashInfer's paged prefill/decode kernel, one per call).
    _, run, q = concurrent_split_case()
    static_q = q.clone()
    run(static_q)
    graph = torch.cuda.CUDAGraph(keep_graph=True)  # keeps the captured graph for the dump
    graph.enable_debug_mode()
    with torch.cuda.graph(graph):
        run(static_q)
    dump = tmp_path / "split.dot"
    graph.debug_dump(str(dump))
    nodes, reach = dot_kernel_reach(dump)
    attention = [node for node, attrs in nodes if "PagedKVCache" in attrs]
    assert len(attention) == 2, (len(nodes), dump.read_text()[:3000])
    first, second = attention
    assert second not in reach[first] and first not in reach[second]


def test_an_error_between_fork_and_join_still_joins_the_lane(monkeypatch):
    # Were the lane left forked, ending the capture would fail with an unjoined-stream error that
    # hides the real one; with the join in a finally the first call's error comes out, and the
    # stream is fit to capture again.
    slot, run, q = concurrent_split_case()
    assert slot.lane is not None
    real_run_rows = flashinfer_decode_slot._run_rows

    def failing_first_call(call, *args):
        if call[0] == 0:
            raise RuntimeError("the first call failed")
        real_run_rows(call, *args)

    monkeypatch.setattr(flashinfer_decode_slot, "_run_rows", failing_first_call)
    static_q = q.clone()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="the first call failed"), torch.cuda.graph(graph):
        run(static_q)
    monkeypatch.setattr(flashinfer_decode_slot, "_run_rows", real_run_rows)
    want_out, want_lse = run(static_q)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = run(static_q)
    graph.replay()
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
