"""The server's flags and environment variables: one :class:`Setting` per field of
:class:`~server.config.ServerConfig`, and how they combine into one.

Every setting has a flag and an environment variable named after it: ``--max-waiting`` reads
``LIL_SPARSE_MAX_WAITING``. A flag given on the command line wins over the environment, which wins
over the default. Default request options use flat settings (``--default-policy``,
``LIL_SPARSE_DEFAULT_POLICY``) and land in ``ServerConfig.default_options``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lil_sparse.config import BACKENDS, DTYPES
from lil_sparse.options import (
    GuardianOptions,
    RequestOptions,
    SamplingOptions,
    SparseOptions,
    StoppingOptions,
)
from server.config import SELECTION_SETTINGS, SWITCH_MODES, ServerConfig

ENV_PREFIX = "LIL_SPARSE_"


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
    choices: tuple[str, ...] | None = None  # the flag's allowed values (usage shows them)

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
    Setting("backend", str, "attention backend: auto, reference, flashinfer (default auto)", BACKENDS),
    Setting("dtype", str, "weights dtype: auto, float32, bfloat16, float16 (default auto)", DTYPES),
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
        SELECTION_SETTINGS,
    ),
    Setting(
        "overlap_scheduling",
        str,
        "launch decode step n+1 before handling step n's tokens: auto, on, off (default auto: on for CUDA)",
        SWITCH_MODES,
    ),
    Setting(
        "warm_up",
        str,
        "run dummy requests through every policy and batch size before serving, so kernel builds "
        "and CUDA graph captures never stall a request: auto, on, off (default auto: on for CUDA)",
        SWITCH_MODES,
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


def _resolve(setting: Setting, flags: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[Any, str]:
    """The flag's value if given, else the parsed env var, else ``None`` (use the default), and
    where it came from (the flag, the env var, or ``""``)."""
    if flags.get(setting.name) is not None:
        return flags[setting.name], setting.flag
    raw = environ.get(setting.env_var)
    if raw is None:
        return None, ""
    try:
        return setting.parse(raw), setting.env_var
    except ValueError as error:
        raise ValueError(f"{setting.name}: bad value in {setting.env_var}: {error}") from None


def build_server_config(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Merge flags (``None`` = not given) over ``LIL_SPARSE_*`` env vars over defaults.

    Raises ``ValueError`` naming the setting, and the flag or env var its value came from, when a
    value is invalid (``selection: must be one of ..., got 'fast' (from LIL_SPARSE_SELECTION)``).
    """
    env = os.environ if environ is None else environ
    sources: dict[str, str] = {}
    server_values = {}
    for setting in SERVER_SETTINGS:
        value, sources[setting.name] = _resolve(setting, flags, env)
        if value is not None:
            server_values[setting.name] = value
    if "model" not in server_values:
        raise ValueError("model: is required (--model or LIL_SPARSE_MODEL)")
    group_values: dict[str, dict[str, Any]] = {group: {} for group in _OPTION_GROUPS}
    for setting, group, option_field in DEFAULT_OPTION_SETTINGS:
        value, sources[setting.name] = _resolve(setting, flags, env)
        if value is not None:
            group_values[group][option_field] = value
    try:
        groups = {}
        for group, cls in _OPTION_GROUPS.items():
            groups[group] = _build_group(group, cls, group_values[group])
        return ServerConfig(**server_values, default_options=RequestOptions(**groups))
    except ValueError as error:
        name = str(error).partition(":")[0]
        if sources.get(name):
            raise ValueError(f"{error} (from {sources[name]})") from None
        raise


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
