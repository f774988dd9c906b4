"""Server configuration: one validated frozen dataclass.

It is built from flags and environment variables by :mod:`server.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lil_sparse.config import SELECTION_MODES, SWITCH
from lil_sparse.loading.fetcher import find_known_model
from lil_sparse.options import (
    RequestOptions,
)

SELECTION_SETTINGS = ("auto", *SELECTION_MODES)
SWITCH_MODES = tuple(SWITCH)  # overlap_scheduling and warm_up: auto, on, off


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the sidecar needs to start. Field names are stable: the Helm chart sets them."""

    model: str
    host: str = "127.0.0.1"  # loopback unless told otherwise; the container and chart pass 0.0.0.0
    port: int = 50051
    metrics_port: int = 9400  # 0 picks a free port (tests)
    max_running: int = 8  # requests decoded concurrently (the engine's batch size)
    max_waiting: int = 64  # requests queued beyond max_running before RESOURCE_EXHAUSTED
    grace_period_seconds: float = 30.0  # SIGTERM: how long in-flight streams may finish
    reflection: bool = True
    guardian_workers: int = 2  # threads compressing for Guardian; 0 checks inline on the engine thread
    device: str = "cpu"
    backend: str = "auto"
    dtype: str = "auto"
    page_size: int = 16
    kv_cache_tokens: int = 32768  # KV pool size in tokens per KV head
    max_model_len: int = 0  # 0: the model's own context
    # Prefill in chunks that share each step with the running streams (EngineConfig).
    chunked_prefill: bool = True
    max_num_batched_tokens: int = 0  # tokens per step; 0: 512 on CPU, 2048 on CUDA
    # When quest/infllm select pages (EngineConfig.selection): "auto" is "when_faster" on CUDA
    # (attend densely in a step where selection would cost more than it saves) and "exact" on CPU
    # (the gate's cost constants describe a GPU). Run "exact" for quality studies.
    selection: str = "auto"
    # Launch decode step n+1 before handling step n's tokens (EngineConfig.overlap_scheduling):
    # "auto" (on for CUDA with chunked prefill), "on" or "off".
    overlap_scheduling: str = "auto"
    # Dummy requests through every policy, batch bucket and the chunked prefill before SERVING
    # (EngineConfig.warm_up): "auto" (on for CUDA), "on" or "off".
    warm_up: str = "auto"
    max_new_tokens_limit: int = 4096  # per-request cap on max_new_tokens (fairness: slots turn over)
    max_prompt_bytes: int = 1 << 20  # UTF-8 bytes of text or chat; refused before tokenizing
    tokenizer_threads: int = 2  # threads tokenizing prompts off the event loop
    tls_cert_file: str = ""  # PEM server certificate chain; with tls_key_file turns on TLS
    tls_key_file: str = ""  # PEM private key of tls_cert_file
    tls_client_ca_file: str = ""  # PEM CA bundle: clients must present a certificate it signed (mTLS)
    auth_token_file: str = ""  # file holding the bearer token every call must carry
    auth_exempt_health: bool = True  # health checks (kubelet probes) need no token
    # A plaintext port serving only grpc.health.v1, for kubelet gRPC probes (which cannot speak
    # TLS); -1: none, 0: a free port (tests).
    health_port: int = -1
    served_model_name: str = ""  # the model id gateways route by; "": the engine's model name
    torch_threads: int = 0  # torch CPU threads; 0: $LIL_SPARSE_TORCH_THREADS, else half the cores
    default_options: RequestOptions = field(default_factory=RequestOptions)

    def __post_init__(self) -> None:
        _require(bool(self.model), "model", "is required (--model or LIL_SPARSE_MODEL)")
        _require(bool(self.host), "host", "must not be empty")
        _require(
            0 <= self.port <= 65535, "port", f"must be in [0, 65535] (0 picks a free port), got {self.port}"
        )
        _require(
            0 <= self.metrics_port <= 65535,
            "metrics_port",
            f"must be in [0, 65535] (0 picks a free port), got {self.metrics_port}",
        )
        _require(self.max_running >= 1, "max_running", f"must be >= 1, got {self.max_running}")
        _require(self.max_waiting >= 0, "max_waiting", f"must be >= 0, got {self.max_waiting}")
        _require(
            self.grace_period_seconds >= 0,
            "grace_period_seconds",
            f"must be >= 0, got {self.grace_period_seconds}",
        )
        _require(self.guardian_workers >= 0, "guardian_workers", f"must be >= 0, got {self.guardian_workers}")
        _require(self.page_size >= 1, "page_size", f"must be >= 1, got {self.page_size}")
        try:  # the default budget's lower bound, one page, needs the page size: checked here
            self.default_options.sparse.budget_pages(self.page_size)
        except ValueError as error:
            _, _, message = str(error).partition(": ")
            raise ValueError(f"default_budget_tokens: {message}") from None
        _require(
            self.kv_cache_tokens >= self.page_size,
            "kv_cache_tokens",
            f"must hold at least one page ({self.page_size} tokens), got {self.kv_cache_tokens}",
        )
        _require(
            self.torch_threads >= 0, "torch_threads", f"must be >= 0 (0: automatic), got {self.torch_threads}"
        )
        _require(
            self.max_model_len >= 0,
            "max_model_len",
            f"must be >= 0 (0: the model's), got {self.max_model_len}",
        )
        _require(
            self.max_num_batched_tokens == 0 or self.max_num_batched_tokens >= self.max_running,
            "max_num_batched_tokens",
            f"must be 0 (auto) or >= max_running ({self.max_running}): every running request needs "
            f"a token of each step, got {self.max_num_batched_tokens}",
        )

        _require(
            self.selection in SELECTION_SETTINGS,
            "selection",
            f"must be one of {', '.join(SELECTION_SETTINGS)}, got {self.selection!r}",
        )
        _require(
            self.overlap_scheduling in SWITCH_MODES,
            "overlap_scheduling",
            f"must be one of {', '.join(SWITCH_MODES)}, got {self.overlap_scheduling!r}",
        )
        _require(
            self.warm_up in SWITCH_MODES,
            "warm_up",
            f"must be one of {', '.join(SWITCH_MODES)}, got {self.warm_up!r}",
        )
        _require(
            self.overlap_scheduling != "on" or self.chunked_prefill,
            "overlap_scheduling",
            "'on' needs chunked_prefill (unchunked prefill steps skip decode)",
        )
        _require(
            self.max_new_tokens_limit >= 1,
            "max_new_tokens_limit",
            f"must be >= 1, got {self.max_new_tokens_limit}",
        )
        _require(
            self.default_options.stopping.max_new_tokens <= self.max_new_tokens_limit,
            "default_max_new_tokens",
            f"must be <= max_new_tokens_limit ({self.max_new_tokens_limit}), "
            f"got {self.default_options.stopping.max_new_tokens}",
        )
        _require(self.max_prompt_bytes >= 1, "max_prompt_bytes", f"must be >= 1, got {self.max_prompt_bytes}")
        _require(
            self.tokenizer_threads >= 1, "tokenizer_threads", f"must be >= 1, got {self.tokenizer_threads}"
        )
        _require(
            -1 <= self.health_port <= 65535,
            "health_port",
            f"must be -1 (none) or in [0, 65535], got {self.health_port}",
        )
        _require(
            bool(self.tls_cert_file) == bool(self.tls_key_file),
            "tls_cert_file",
            "tls_cert_file and tls_key_file must be given together",
        )
        _require(
            not self.tls_client_ca_file or bool(self.tls_cert_file),
            "tls_client_ca_file",
            "mTLS needs TLS: give tls_cert_file and tls_key_file too",
        )

    @property
    def engine_selection(self) -> str:
        """``EngineConfig.selection`` of this server: ``selection``, with ``"auto"`` resolved to
        ``"when_faster"`` on CUDA and ``"exact"`` elsewhere."""
        if self.selection != "auto":
            return self.selection
        return "when_faster" if self.device.startswith("cuda") else "exact"

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def model_id(self) -> str:
        """The id gateways route by and vLLM-named metrics carry: ``served_model_name``, else the
        model's name: a folder's name, a GGUF file's stem, or a known model's canonical registry name
        (``smollm2`` and ``SmolLM2-135M-Instruct`` both give ``smollm2-135m-instruct``), as the
        loader resolves it (an existing path wins over a registry name), so info, ``lil_sparse_*``
        and ``vllm:*`` metrics and the gateway all see one id."""
        if self.served_model_name:
            return self.served_model_name
        path = Path(self.model).expanduser()
        if not path.exists():
            known = find_known_model(self.model)
            if known is not None:
                return known.name
        return path.stem if path.suffix == ".gguf" else path.name

    @property
    def engine_overlap(self) -> bool | None:
        """``overlap_scheduling`` as ``EngineConfig.overlap_scheduling`` takes it (None: auto)."""
        return SWITCH[self.overlap_scheduling]

    @property
    def engine_warm_up(self) -> bool | None:
        """``warm_up`` as ``EngineConfig.warm_up`` takes it (None: auto)."""
        return SWITCH[self.warm_up]

    @property
    def max_in_flight(self) -> int:
        """Requests admitted at once (running plus waiting); one more is refused."""
        return self.max_running + self.max_waiting


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field_name}: {message}")
