"""Loading problem sets and building prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.datasets import DatasetSelection, Problem, load_problems, resolve_data_dir
from eval.prompting import INSTRUCTION, build_messages, prompt_token_ids
from lil_sparse.loading.tokenizer import Tokenizer


def test_load_keeps_file_order_and_limit(data_dir: Path) -> None:
    problems = load_problems(data_dir, DatasetSelection.parse("gsm8k:2"))
    assert [p.problem_id for p in problems] == ["gsm8k-0", "gsm8k-1"]
    assert problems[1].answer == "24" and problems[1].dataset == "gsm8k"
    assert len(load_problems(data_dir, DatasetSelection.parse("gsm8k"))) == 3


def test_bad_record_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.jsonl").write_text('{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2"):
        load_problems(tmp_path, DatasetSelection("broken"))


def test_selection_and_data_dir_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="limit"):
        DatasetSelection("gsm8k", -1)
    with pytest.raises(ValueError, match="datasets"):
        DatasetSelection.parse("gsm8k:many")
    with pytest.raises(ValueError, match="dataset"):
        load_problems(tmp_path, DatasetSelection("missing"))
    monkeypatch.setenv("LIL_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    monkeypatch.delenv("LIL_DATA_DIR")
    with pytest.raises(ValueError, match="data_dir"):
        resolve_data_dir(None)


def test_prompt_is_chat_template_around_problem_and_instruction(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer.from_folder(tiny_model_dir)
    problem = Problem("gsm8k", "gsm8k-9", "What is 2 + 2?", "4")
    assert build_messages(problem) == [{"role": "user", "content": f"What is 2 + 2?\n\n{INSTRUCTION}"}]
    ids = prompt_token_ids(tokenizer, problem)
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert text == f"<|im_start|>user\nWhat is 2 + 2?\n\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
