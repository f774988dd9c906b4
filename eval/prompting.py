"""The prompt: the model's chat template around the problem and the paper's instruction."""

from __future__ import annotations

from typing import Protocol

from eval.datasets import Problem

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class ChatTokenizer(Protocol):
    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str: ...

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...


def build_messages(problem: Problem) -> list[dict[str, str]]:
    """One user turn: the problem, a blank line, then the instruction (as in the Lil paper)."""
    return [{"role": "user", "content": f"{problem.problem}\n\n{INSTRUCTION}"}]


def prompt_token_ids(tokenizer: ChatTokenizer, problem: Problem) -> list[int]:
    """Token ids of the chat prompt, generation prompt included (the template writes any BOS)."""
    text = tokenizer.apply_chat_template(build_messages(problem), add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)
