"""SMG-compatible worker service: SMG's SGLang scheduler proto beside ``lil_sparse.v1``.

``add_smg_service`` registers it on the sidecar's gRPC server (same port), so the SMG gateway
(``smg launch --worker-urls grpc://HOST:PORT``) can route OpenAI requests to this worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc

from server.config import ServerConfig
from server.engine_loop import EngineLoop, LoopStats
from server.smg.servicer import SERVICE_NAME, SmgSchedulerServicer

__all__ = ["SERVICE_NAME", "SmgSchedulerServicer", "add_smg_service"]


def add_smg_service(
    server: grpc.aio.Server,
    engine_loop: EngineLoop,
    engine: Any,
    config: ServerConfig,
    version: str,
    load: Callable[[], LoopStats | None],
) -> SmgSchedulerServicer:
    """Register the SGLang scheduler service on ``server``; returns the servicer (for drain)."""
    servicer = SmgSchedulerServicer(engine_loop, engine, config, version, load)
    sglang_scheduler_pb2_grpc.add_SglangSchedulerServicer_to_server(servicer, server)
    return servicer
