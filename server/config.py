"""Server configuration: one validated frozen dataclass, built from flags and environment variables.

Every setting has a flag and an environment variable named after it: ``--max-waiting`` reads
``LIL_SPARSE_MAX_WAITING``. A flag given on the command line wins over the environment, which wins
over the default. Default request options use flat settings (``--default-policy``,
``LIL_SPARSE_DEFAULT_POLICY``) and land in ``ServerConfig.default_options``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lil_sparse.config import SELECTION_MODES
from lil_sparse.loading.fetcher import find_known_model
from lil_sparse.options import (
    GuardianOptions,
    RequestOptions,
    SamplingOptions,
    SparseOptions,
    StoppingOptions,
)

ENV_PREFIX = "LIL_SPARSE_"
SELECTION_SETTINGS = ("auto", *SELECTION_MODES)
OVERLAP_MODES = ("auto", "on", "off")


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
            self.overlap_scheduling in OVERLAP_MODES,
            "overlap_scheduling",
            f"must be one of {', '.join(OVERLAP_MODES)}, got {self.overlap_scheduling!r}",
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
        return {"auto": None, "on": True, "off": False}[self.overlap_scheduling]

    @property
    def max_in_flight(self) -> int:
        """Requests admitted at once (running plus waiting); one more is refused."""
        return self.max_running + self.max_waiting


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field_name}: {message}")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


@dataclass(frozen=True, slots=True)
class Setting:
    """One flat setting: its flag/env name, how to parse an env value, and the flag's help."""

    name: str  # snake_case; the flag is --name-with-dashes, the env var LIL_SPARSE_NAME
    parse: Callable[[str], Any]
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


SERVER_SETTINGS: tuple[Setting, ...] = (
    Setting("model", str, "model folder, GGUF file or registry name (required)"),
    Setting("host", str, "address to bind (default 127.0.0.1; 0.0.0.0 for every interface)"),
    Setting("port", int, "gRPC port (default 50051; 0 picks a free one)"),
    Setting("metrics_port", int, "Prometheus port (default 9400; 0 picks a free one)"),
    Setting("max_running", int, "requests decoded concurrently (default 8)"),
    Setting("max_waiting", int, "queued requests before RESOURCE_EXHAUSTED (default 64)"),
    Setting("grace_period_seconds", float, "SIGTERM drain time for in-flight streams (default 30)"),
    Setting("reflection", parse_bool, "serve gRPC reflection (default true)"),
    Setting("guardian_workers", int, "Guardian compression threads (default 2; 0 inline)"),
    Setting("device", str, "torch device (default cpu)"),
    Setting("backend", str, "attention backend: auto, reference, flashinfer (default auto)"),
    Setting("dtype", str, "weights dtype: auto, float32, bfloat16, float16 (default auto)"),
    Setting("page_size", int, "tokens per KV page (default 16)"),
    Setting("kv_cache_tokens", int, "KV pool size in tokens per KV head (default 32768)"),
    Setting("max_model_len", int, "max prompt+output tokens (default 0: the model's context)"),
    Setting("chunked_prefill", parse_bool, "prefill prompts in chunks between decode rows (default true)"),
    Setting(
        "max_num_batched_tokens",
        int,
        "tokens per step, decode rows plus prompt chunks (default 0: 512 on CPU, 2048 on CUDA)",
    ),
    Setting(
        "selection",
        str,
        "when quest/infllm select pages: exact (always, within the budget), when_faster (attend "
        "densely in a step where selection would cost more than it saves), or auto (default: "
        "when_faster on CUDA, exact on CPU)",
    ),
    Setting(
        "overlap_scheduling",
        str,
        "launch decode step n+1 before handling step n's tokens: auto, on, off (default auto: on for CUDA)",
    ),
    Setting("max_new_tokens_limit", int, "largest max_new_tokens a request may ask (default 4096)"),
    Setting("max_prompt_bytes", int, "largest prompt in UTF-8 bytes (default 1048576)"),
    Setting("tokenizer_threads", int, "threads tokenizing prompts (default 2)"),
    Setting("tls_cert_file", str, "PEM certificate chain; with --tls-key-file serves TLS"),
    Setting("tls_key_file", str, "PEM private key for --tls-cert-file"),
    Setting("tls_client_ca_file", str, "PEM CA bundle; clients must present a cert it signed (mTLS)"),
    Setting("auth_token_file", str, "file with the bearer token every call must carry"),
    Setting("auth_exempt_health", parse_bool, "health checks need no token (default true)"),
    Setting("health_port", int, "plaintext port serving only health, for probes (default -1: none)"),
    Setting("served_model_name", str, "model id the SMG gateway routes by (default: the model's name)"),
    Setting("torch_threads", int, "torch CPU threads (default 0: half the cores, at most 8)"),
)

# Default request options: setting name -> (options group, field in that group).
DEFAULT_OPTION_SETTINGS: tuple[tuple[Setting, str, str], ...] = (
    (Setting("default_temperature", float, "default temperature (0 greedy)"), "sampling", "temperature"),
    (Setting("default_top_k", int, "default top-k (0 off)"), "sampling", "top_k"),
    (Setting("default_top_p", float, "default top-p (1 off)"), "sampling", "top_p"),
    (Setting("default_max_new_tokens", int, "default max new tokens"), "stopping", "max_new_tokens"),
    (Setting("default_policy", str, "default sparse policy"), "sparse", "policy"),
    (Setting("default_budget_tokens", int, "default KV token budget"), "sparse", "budget_tokens"),
    (Setting("default_sink_tokens", int, "default sink tokens"), "sparse", "sink_tokens"),
    (Setting("default_recent_tokens", int, "default recent tokens"), "sparse", "recent_tokens"),
    (Setting("default_dense_layers", int, "default dense leading layers"), "sparse", "dense_layers"),
    (Setting("default_guardian", parse_bool, "Guardian on by default"), "guardian", "enabled"),
    (
        Setting("default_guardian_interval_tokens", int, "default Guardian interval"),
        "guardian",
        "interval_tokens",
    ),
    (
        Setting("default_guardian_threshold_bytes", int, "default Guardian threshold"),
        "guardian",
        "threshold_bytes",
    ),
    (Setting("default_guardian_mode", str, "default Guardian mode: full, incremental"), "guardian", "mode"),
    (
        Setting("default_guardian_source", str, "default Guardian source: text, token_ids"),
        "guardian",
        "source",
    ),
)

_OPTION_GROUPS: dict[str, type] = {
    "sampling": SamplingOptions,
    "stopping": StoppingOptions,
    "sparse": SparseOptions,
    "guardian": GuardianOptions,
}


def all_settings() -> tuple[Setting, ...]:
    return SERVER_SETTINGS + tuple(setting for setting, _, _ in DEFAULT_OPTION_SETTINGS)


def _resolve(setting: Setting, flags: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    """The flag's value if given, else the parsed env var, else ``None`` (use the default)."""
    if flags.get(setting.name) is not None:
        return flags[setting.name]
    raw = environ.get(setting.env_var)
    if raw is None:
        return None
    try:
        return setting.parse(raw)
    except ValueError as error:
        raise ValueError(f"{setting.name}: bad value in {setting.env_var}: {error}") from None


def build_server_config(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Merge flags (``None`` = not given) over ``LIL_SPARSE_*`` env vars over defaults.

    Raises ``ValueError`` naming the setting when a value is invalid.
    """
    env = os.environ if environ is None else environ
    server_values = {s.name: value for s in SERVER_SETTINGS if (value := _resolve(s, flags, env)) is not None}
    if "model" not in server_values:
        raise ValueError("model: is required (--model or LIL_SPARSE_MODEL)")
    group_values: dict[str, dict[str, Any]] = {group: {} for group in _OPTION_GROUPS}
    for setting, group, option_field in DEFAULT_OPTION_SETTINGS:
        value = _resolve(setting, flags, env)
        if value is not None:
            group_values[group][option_field] = value
    groups = {group: _build_group(group, cls, group_values[group]) for group, cls in _OPTION_GROUPS.items()}
    return ServerConfig(**server_values, default_options=RequestOptions(**groups))


def _build_group(group: str, cls: type, values: dict[str, Any]) -> Any:
    """Build one options group; an error names the ``default_*`` setting, not the inner field."""
    try:
        return cls(**values)
    except ValueError as error:
        option_field, _, message = str(error).partition(": ")
        for setting, setting_group, setting_field in DEFAULT_OPTION_SETTINGS:
            if setting_group == group and setting_field == option_field:
                raise ValueError(f"{setting.name}: {message}") from None
        raise
