"""The shape of a Llama or Qwen2 decoder: ``ModelConfig``, read from a Hugging Face ``config.json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ARCHITECTURES = ("llama", "qwen2")
_HF_ARCHITECTURE_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """Llama-3 ("llama3") RoPE frequency scaling, as in Llama 3.1/3.2 configs.

    Wavelengths longer than ``original_max_position_embeddings / low_freq_factor`` are divided by
    ``factor``, shorter than ``original_max_position_embeddings / high_freq_factor`` are kept, and
    the band between is interpolated smoothly.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"

    def __post_init__(self) -> None:
        if self.rope_type != "llama3":
            raise ValueError(f"rope_scaling.rope_type: only 'llama3' is supported, got {self.rope_type!r}")
        if self.factor < 1.0:
            raise ValueError(f"rope_scaling.factor: must be >= 1, got {self.factor}")
        if not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                "rope_scaling: need 0 < low_freq_factor < high_freq_factor, got "
                f"{self.low_freq_factor} and {self.high_freq_factor}"
            )
        if self.original_max_position_embeddings <= 0:
            raise ValueError(
                "rope_scaling.original_max_position_embeddings: must be positive, "
                f"got {self.original_max_position_embeddings}"
            )

    @staticmethod
    def from_hf_dict(d: dict[str, Any] | None) -> RopeScaling | None:
        """Parse HF ``rope_scaling`` / ``rope_parameters``; None for plain RoPE ("default")."""
        if not d:
            return None
        rope_type = d.get("rope_type", d.get("type", "default"))
        if rope_type == "default":
            return None
        if rope_type != "llama3":
            raise ValueError(
                f"rope_scaling: RoPE scaling type {rope_type!r} is not supported "
                "(only 'llama3' and 'default')"
            )
        return RopeScaling(
            factor=float(d["factor"]),
            low_freq_factor=float(d["low_freq_factor"]),
            high_freq_factor=float(d["high_freq_factor"]),
            original_max_position_embeddings=int(d["original_max_position_embeddings"]),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "rope_type": self.rope_type,
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything needed to build :class:`lil_sparse.models.transformer.CausalLM`.

    ``attention_bias`` is True for Qwen2 (q/k/v projections carry a bias, o_proj does not).
    ``eos_token_ids`` lists every id that ends generation (config + generation config).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    rope_scaling: RopeScaling | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {self.architecture!r}")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_kv_heads: must divide num_heads ({self.num_heads}), got {self.num_kv_heads}"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim: must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta: must be positive, got {self.rope_theta}")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"rms_norm_eps: must be positive, got {self.rms_norm_eps}")
        if self.bos_token_id is not None and not 0 <= self.bos_token_id < self.vocab_size:
            raise ValueError(f"bos_token_id: must be in [0, {self.vocab_size}), got {self.bos_token_id}")
        if not isinstance(self.eos_token_ids, tuple):
            raise ValueError(f"eos_token_ids: must be a tuple, got {type(self.eos_token_ids).__name__}")
        for token_id in self.eos_token_ids:
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"eos_token_ids: id {token_id} is outside [0, {self.vocab_size})")

    @property
    def queries_per_kv_head(self) -> int:
        return self.num_heads // self.num_kv_heads

    @staticmethod
    def from_hf_dict(d: dict[str, Any], extra_eos_token_ids: tuple[int, ...] = ()) -> ModelConfig:
        """Read a Hugging Face ``config.json`` dict of a LlamaForCausalLM or Qwen2ForCausalLM.

        Accepts both the transformers 4 keys (``rope_theta``, ``rope_scaling``) and the
        transformers 5 ``rope_parameters`` dict. ``extra_eos_token_ids`` (from
        ``generation_config.json``) are merged into ``eos_token_ids``.
        """
        model_type = d.get("model_type")
        if model_type not in ARCHITECTURES:
            raise ValueError(f"model_type: only 'llama' and 'qwen2' models are supported, got {model_type!r}")
        if d.get("use_sliding_window"):
            raise ValueError("use_sliding_window: sliding-window attention is not supported")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act: only 'silu' is supported, got {d.get('hidden_act')!r}")
        rope_parameters = d.get("rope_parameters") or {}
        rope_theta = d.get("rope_theta", rope_parameters.get("rope_theta", 10000.0))
        rope_scaling = RopeScaling.from_hf_dict(d.get("rope_scaling") or rope_parameters)
        num_heads = int(d["num_attention_heads"])
        hidden_size = int(d["hidden_size"])
        head_dim = d.get("head_dim") or hidden_size // num_heads
        eos = d.get("eos_token_id")
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        eos_ids += [i for i in extra_eos_token_ids if i not in eos_ids]
        return ModelConfig(
            architecture=model_type,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rope_theta=float(rope_theta),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases and its config does not say so.
            attention_bias=model_type == "qwen2" or bool(d.get("attention_bias", False)),
            rope_scaling=rope_scaling,
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=tuple(int(i) for i in eos_ids),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers and :meth:`from_hf_dict` both read back."""
        d: dict[str, Any] = {
            "architectures": [_HF_ARCHITECTURE_CLASSES[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.to_hf_dict() if self.rope_scaling else None,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids)
            if len(self.eos_token_ids) != 1
            else self.eos_token_ids[0],
        }
        if self.architecture == "llama":
            d["attention_bias"] = self.attention_bias
            d["mlp_bias"] = False
        else:
            d["use_sliding_window"] = False
        return d
