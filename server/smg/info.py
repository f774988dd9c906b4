"""What the SMG gateway asks a worker about itself: model, server, load and tokenizer bundle.

The gateway calls GetModelInfo and GetServerInfo when it registers a worker, streams
GetTokenizer once to build its own tokenizer (it applies the chat template and tokenizes), and
polls GetLoads for load-aware routing.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from smg_grpc_proto.generated import common_pb2
from smg_grpc_proto.generated import sglang_scheduler_pb2 as sglang

from lil_sparse.options import RequestOptions
from server.config import ServerConfig
from server.engine_loop import LoopStats

# Chunk size of the tokenizer stream; the gateway's client accepts up to 64 KiB per message.
TOKENIZER_CHUNK_BYTES = 64 * 1024


def default_sampling_json(defaults: RequestOptions) -> str:
    """The worker's sampling defaults, which the gateway applies when a request leaves them out."""
    sampling = defaults.sampling
    values = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k or -1}
    return json.dumps(values, separators=(",", ":"))


def model_info(
    info: Any, tokenizer: Any, hf_config: dict[str, Any], config: ServerConfig, served_model_name: str
) -> sglang.GetModelInfoResponse:
    """``info`` is the engine's EngineInfo, ``tokenizer`` its Tokenizer, ``hf_config`` the
    model's config in Hugging Face form (``architectures``: the HF class, e.g. LlamaForCausalLM)."""
    bos = tokenizer.bos_token_id
    return sglang.GetModelInfoResponse(
        model_path=config.model,
        tokenizer_path="",  # served over GetTokenizer instead
        is_generation=True,
        default_sampling_params_json=default_sampling_json(config.default_options),
        served_model_name=served_model_name,
        max_context_length=info.max_context,
        vocab_size=tokenizer.vocab_size,
        model_type=str(info.architecture),
        architectures=list(hf_config.get("architectures", [])),
        eos_token_ids=sorted(tokenizer.eos_token_ids),
        bos_token_id=-1 if bos is None else bos,
        max_req_input_len=info.max_context - 1,
    )


def server_info(
    info: Any, config: ServerConfig, version: str, in_flight: int, started_at: float
) -> sglang.GetServerInfoResponse:
    args = Struct()
    args.update(
        {
            "model_path": config.model,
            "page_size": info.page_size,
            "backend": str(info.backend),
            "device": str(info.device),
            "max_running_requests": config.max_running,
            "max_queued_requests": config.max_waiting,
            "kv_cache_tokens": config.kv_cache_tokens,
            "policies": list(info.policies),
        }
    )
    start = Timestamp()
    start.FromSeconds(int(started_at))
    return sglang.GetServerInfoResponse(
        server_args=args,
        active_requests=in_flight,
        uptime_seconds=time.time() - started_at,
        sglang_version=f"lil-sparse {version}",
        server_type="grpc",
        start_time=start,
        max_total_num_tokens=config.kv_cache_tokens,
    )


def loads(stats: LoopStats | None, config: ServerConfig, version: str) -> sglang.GetLoadsResponse:
    """One rank's load. Tokens are page-token slots summed over KV heads, as the pool counts them."""
    running = stats.num_running if stats else 0
    waiting = max(stats.num_waiting, stats.in_flight - stats.num_running) if stats else 0
    usage = stats.kv_usage_ratio if stats else 0.0
    capacity = config.kv_cache_tokens
    load = sglang.SchedulerLoad(
        dp_rank=0,
        num_running_reqs=running,
        num_waiting_reqs=waiting,
        num_total_reqs=running + waiting,
        num_used_tokens=round(usage * capacity),
        max_total_num_tokens=capacity,
        token_usage=usage,
        utilization=running / config.max_running,
        max_running_requests=config.max_running,
    )
    aggregate = sglang.AggregateMetrics(
        total_running_reqs=running,
        total_waiting_reqs=waiting,
        total_reqs=running + waiting,
        avg_token_usage=usage,
        avg_utilization=load.utilization,
    )
    return sglang.GetLoadsResponse(
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        version=version,
        dp_rank_count=1,
        loads=[load],
        aggregate=aggregate,
    )


def tokenizer_bundle(tokenizer: Any, hf_config: dict[str, Any]) -> bytes:
    """A zip of ``tokenizer.json``, ``tokenizer_config.json`` (chat template) and ``config.json``
    (the model's Hugging Face config). Written from the loaded model, so a GGUF model (no
    tokenizer files on disk) works too.
    """
    buffer = io.BytesIO()
    with (
        tempfile.TemporaryDirectory() as folder,
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle,
    ):
        tokenizer.save(folder)
        Path(folder, "config.json").write_text(json.dumps(hf_config))
        for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
            bundle.write(Path(folder, name), name)
    return buffer.getvalue()


def tokenizer_chunks(bundle: bytes) -> Iterator[common_pb2.GetTokenizerChunk]:
    """The bundle in chunks; the last one carries the SHA-256 of the whole zip."""
    digest = hashlib.sha256(bundle).hexdigest()
    for offset in range(0, len(bundle), TOKENIZER_CHUNK_BYTES):
        end = offset + TOKENIZER_CHUNK_BYTES
        yield common_pb2.GetTokenizerChunk(
            data=bundle[offset:end], sha256=digest if end >= len(bundle) else ""
        )
