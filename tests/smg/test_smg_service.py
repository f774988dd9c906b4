"""The SMG (SGLang scheduler) service called directly with the published smg-grpc-proto stubs."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from smg_grpc_proto.generated import common_pb2
from smg_grpc_proto.generated import sglang_scheduler_pb2 as sglang
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc as sglang_grpc
from smg_harness import finished, scrape, wait_until
from tokenizers import Tokenizer as BackendTokenizer

from lil_sparse.testing.step_hold import StepHold


@pytest.fixture(scope="module")
def worker(start_worker: Any) -> Any:
    return start_worker(served_model_name="tiny-served")


@pytest.fixture
def stub(worker: Any) -> Iterator[sglang_grpc.SglangSchedulerStub]:
    with grpc.insecure_channel(worker.address) as channel:
        yield sglang_grpc.SglangSchedulerStub(channel)


def _request(request_id: str, max_new_tokens: int = 8, stream: bool = False, **custom: Any) -> Any:
    params = sglang.SamplingParams(temperature=0.0, top_p=1.0, top_k=-1, max_new_tokens=max_new_tokens)
    if custom:
        params.custom_params.CopyFrom(Struct())
        params.custom_params.update(custom)
    return sglang.GenerateRequest(
        request_id=request_id,
        tokenized=sglang.TokenizedInput(input_ids=list(range(10, 60))),
        sampling_params=params,
        stream=stream,
    )


def test_smg_model_info_and_tokenizer_bundle(stub: Any, worker: Any) -> None:
    info = stub.GetModelInfo(sglang.GetModelInfoRequest())
    assert (info.served_model_name, info.max_context_length, info.vocab_size) == ("tiny-served", 2048, 384)
    assert list(info.eos_token_ids) == [2] and info.is_generation
    assert (info.model_type, list(info.architectures)) == ("llama", ["LlamaForCausalLM"])
    assert json.loads(info.default_sampling_params_json) == {"temperature": 0.0, "top_p": 1.0, "top_k": -1}
    chunks = list(stub.GetTokenizer(common_pb2.GetTokenizerRequest()))
    bundle = b"".join(chunk.data for chunk in chunks)
    assert chunks[-1].sha256 == hashlib.sha256(bundle).hexdigest()
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        assert sorted(archive.namelist()) == ["config.json", "tokenizer.json", "tokenizer_config.json"]
        backend = BackendTokenizer.from_str(archive.read("tokenizer.json").decode())
        template = json.loads(archive.read("tokenizer_config.json"))["chat_template"]
        model_config = json.loads(archive.read("config.json"))
    assert (model_config["architectures"], model_config["vocab_size"]) == (["LlamaForCausalLM"], 384)
    engine_tokenizer = worker.server._engine.tokenizer
    text = "Natalia sold 48 clips."
    assert backend.encode(text, add_special_tokens=False).ids == engine_tokenizer.encode(text)
    assert template == engine_tokenizer.chat_template


def test_smg_generate_non_stream_and_stream_agree(stub: Any) -> None:
    whole = list(stub.Generate(_request("whole", max_new_tokens=8)))
    assert [response.WhichOneof("response") for response in whole] == ["complete"]
    complete = whole[0].complete
    assert (complete.finish_reason, complete.prompt_tokens, complete.completion_tokens) == ("length", 50, 8)
    streamed = list(stub.Generate(_request("streamed", max_new_tokens=8, stream=True)))
    chunks = [response.chunk for response in streamed[:-1]]
    assert streamed[-1].complete.output_ids == complete.output_ids
    assert [token for chunk in chunks for token in chunk.token_ids] == list(complete.output_ids)
    assert chunks[-1].completion_tokens == 8 and {response.request_id for response in streamed} == {
        "streamed"
    }


def test_smg_custom_params_choose_policy_and_guardian(stub: Any, worker: Any) -> None:
    before = scrape(worker.metrics_port)
    custom = {
        "sparse": {"policy": "h2o", "budget_tokens": 32},
        "guardian": {"enabled": True, "interval_tokens": 4, "threshold_bytes": 1000},
    }
    (response,) = stub.Generate(_request("custom", max_new_tokens=100, **custom))
    # The engine thread counts a request just after handing the stream its final event.
    assert wait_until(lambda: finished(scrape(worker.metrics_port), policy="h2o") == 1)
    assert finished(before, policy="h2o") == 0
    # Guardian stops at its second check (8 tokens): growth is below the 1000-byte threshold.
    assert (response.complete.finish_reason, response.complete.completion_tokens) == ("stop", 8)


@pytest.mark.parametrize(
    ("custom", "field"),
    [
        ({"sparse": {"policy": "nope"}}, "policy"),
        ({"sparse": {"budget": 64}}, "custom_params.sparse.budget"),
        ({"colour": "red"}, "custom_params.colour"),
        ({"guardian": {"interval_tokens": 2.5}}, "custom_params.guardian.interval_tokens"),
        ({"sparse": {"budget_tokens": "128"}}, "custom_params.sparse.budget_tokens"),
        ({"guardian": {"enabled": "yes"}}, "custom_params.guardian.enabled"),
        ({"sparse": {"policy": 3}}, "custom_params.sparse.policy"),
        ({"seed": -1}, "seed"),
        # NaN and infinities reach the field's own check (they raised INTERNAL in the conversion).
        ({"seed": float("nan")}, "custom_params.seed: must be a whole number, got nan"),
        ({"sparse": {"budget_tokens": float("inf")}}, "custom_params.sparse.budget_tokens: must be a whole"),
        ({"guardian": {"interval_tokens": -float("inf")}}, "custom_params.guardian.interval_tokens: must"),
        ({"sparse": {"policy": float("nan")}}, "custom_params.sparse.policy: must be a string, got nan"),
        ({"seed": 2.0**64}, "seed: must be in [0, 2^63) (int64), got 18446744073709551616"),
    ],
)
def test_smg_bad_custom_params_are_invalid_argument(stub: Any, custom: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.Generate(_request("bad", **custom)))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(field)


def test_smg_unsupported_sampling_is_invalid_argument(stub: Any) -> None:
    request = _request("n2")
    request.sampling_params.n = 2
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.Generate(request))
    assert (raised.value.code(), raised.value.details().split(":")[0]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "n",
    )


def test_smg_abort_frees_pages_and_loads_report_running(
    stub: Any, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = _request("long", max_new_tokens=1900, stream=True)
    request.sampling_params.ignore_eos = True
    responses: list[Any] = []
    first = threading.Event()
    hold = StepHold.install(monkeypatch, worker.server.engine)  # still running when aborted

    def consume() -> None:
        for response in stub.Generate(request):
            responses.append(response)
            if not first.is_set():
                hold.hold()
                first.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert first.wait(30)
    # Stats publish after each engine step, so the first chunk can beat them by one step.
    assert wait_until(lambda: stub.GetLoads(sglang.GetLoadsRequest()).loads[0].num_running_reqs == 1)
    loads = stub.GetLoads(sglang.GetLoadsRequest())
    assert loads.dp_rank_count == 1
    assert loads.loads[0].token_usage > 0 and loads.loads[0].max_running_requests == 4
    cancelled_before = finished(scrape(worker.metrics_port), finish_reason="cancelled")
    reply = stub.Abort(sglang.AbortRequest(request_id="long"))
    hold.release()
    assert reply.success
    thread.join(30)
    assert responses[-1].complete.finish_reason == "abort"
    assert wait_until(lambda: stub.GetLoads(sglang.GetLoadsRequest()).loads[0].token_usage == 0.0)
    assert not stub.Abort(sglang.AbortRequest(request_id="long")).success  # already gone
    # The gateway aborts for a client that went away: a cancel, not the server's abort.
    assert finished(scrape(worker.metrics_port), finish_reason="cancelled") == cancelled_before + 1


def test_smg_abort_does_not_reach_a_lil_sparse_v1_stream(
    stub: Any, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both services share the engine loop's request ids; Abort names only its own service's
    requests, so a guessed id cannot end another client's lil_sparse.v1 stream."""
    from lil_client import LilClient

    hold = StepHold.install(monkeypatch, worker.server.engine)
    hold.hold()  # the v1 request is in flight, and cannot finish, while Abort names its id
    tokens: list[int] = []
    with LilClient(worker.address) as client:
        stream = client.generate("hello " * 10, max_new_tokens=40, ignore_eos=True, request_id="v1-shared")
        thread = threading.Thread(target=lambda: tokens.extend(chunk.token_count for chunk in stream))
        thread.start()
        try:
            assert wait_until(lambda: worker.server.engine_loop.in_flight == 1)
            reply = stub.Abort(sglang.AbortRequest(request_id="v1-shared"))
        finally:
            hold.release()
        thread.join(30)
    assert (reply.success, reply.message) == (False, "request v1-shared not found")
    assert (stream.summary.finish_reason, sum(tokens)) == ("length", 40)


def test_smg_health_check(stub: Any) -> None:
    assert stub.HealthCheck(sglang.HealthCheckRequest()).healthy


def test_smg_kv_events_are_unimplemented(stub: Any) -> None:
    """The gateway subscribes on registration; UNIMPLEMENTED makes it route on loads instead."""
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.SubscribeKvEvents(common_pb2.SubscribeKvEventsRequest()))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    "method",
    [
        "Embed",
        "FlushCache",
        "StartProfile",
        "StopProfile",
        "LoadLoRAAdapter",
        "UnloadLoRAAdapter",
        "ListLoadedLoRAAdapters",
    ],
)
def test_smg_other_rpcs_answer_unimplemented_with_our_message(stub: Any, method: str) -> None:
    """Our handler answers (the generated default's "Method not implemented!" comes with a raise
    and a traceback in the server's log per call)."""
    from google.protobuf.message_factory import GetMessageClass

    descriptor = sglang.DESCRIPTOR.services_by_name["SglangScheduler"].methods_by_name[method]
    with pytest.raises(grpc.RpcError) as raised:
        getattr(stub, method)(GetMessageClass(descriptor.input_type)())
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert raised.value.details() == f"lil-sparse does not implement {method}"


def test_smg_readme_custom_params_example_is_what_the_worker_reads() -> None:
    from pathlib import Path

    from server.smg.convert import custom_overrides

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (example,) = [line for line in readme.splitlines() if line.startswith('{"sparse": ')]
    assert custom_overrides(json.loads(example)) == {
        "sparse": {"policy": "quest", "budget_tokens": 128},
        "guardian": {"enabled": True, "interval_tokens": 100},
        "seed": 7,
    }


@pytest.mark.parametrize(
    ("edit", "code", "field"),
    [
        (
            lambda r: setattr(r.sampling_params, "max_new_tokens", 100_000),
            "INVALID_ARGUMENT",
            "max_new_tokens",
        ),
        (
            lambda r: r.sampling_params.stop.extend([f"s{i}" for i in range(17)]),
            "INVALID_ARGUMENT",
            "stop_strings",
        ),
        (lambda r: r.sampling_params.stop.append("y" * 257), "INVALID_ARGUMENT", "stop_strings[0]"),
        (lambda r: setattr(r, "request_id", "r" * 129), "INVALID_ARGUMENT", "request_id"),
        (lambda r: setattr(r, "request_id", "bad\nid"), "INVALID_ARGUMENT", "request_id"),
        (
            lambda r: r.tokenized.input_ids.extend([11] * 2048),
            "OUT_OF_RANGE",
            "tokenized.input_ids",
        ),
    ],
)
def test_smg_path_keeps_the_servers_request_limits(stub: Any, edit: Any, code: str, field: str) -> None:
    """The caps of lil_sparse.v1 (max_new_tokens_limit, stop list, request id, context) hold here too."""
    request = _request("limits")
    edit(request)
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.Generate(request))
    assert (raised.value.code().name, raised.value.details().split(":")[0]) == (code, field)
