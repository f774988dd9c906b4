"""Read a Hugging Face model folder: ``config.json`` (+ ``generation_config.json``) and safetensors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from lil_sparse.models.config import ModelConfig


def generation_eos_token_ids(folder: Path) -> tuple[int, ...]:
    """EOS ids from ``generation_config.json`` (chat models often list more there than in config.json)."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return ()
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, int) else tuple(int(i) for i in eos)


def read_hf_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder}: no config.json; expected a Hugging Face model folder")
    return ModelConfig.from_hf_dict(
        json.loads(path.read_text(encoding="utf-8")), extra_eos_token_ids=generation_eos_token_ids(folder)
    )


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files: those an index names if there is one (sharded), else every ``*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no *.safetensors files (only safetensors weights are supported)")
    return files


def hf_state_dict(
    folder: Path, dtype: torch.dtype, device: str | torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor in the folder, cast to ``dtype`` on ``device``."""
    for path in safetensors_files(folder):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, handle.get_tensor(name).to(device=device, dtype=dtype)
