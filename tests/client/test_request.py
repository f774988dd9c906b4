"""Building requests needs no server: absent options stay absent, enums map by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from lil_client import GenerateOptions, build_request
from lil_client._proto.lil_sparse.v1 import options_pb2


def test_only_given_options_are_set() -> None:
    request = build_request("hi", options=GenerateOptions(temperature=0.0, policy="quest", guardian=True))
    assert request.text == "hi"
    assert request.sampling.HasField("temperature") and request.sampling.temperature == 0.0
    assert not request.sampling.HasField("top_p")
    assert request.sparse.policy == options_pb2.POLICY_QUEST
    assert not request.sparse.HasField("budget_tokens")
    assert request.guardian.enabled is True
    assert request.guardian.mode == options_pb2.GUARDIAN_MODE_UNSPECIFIED
    assert not request.HasField("request_id")


def test_chat_and_token_inputs() -> None:
    chat = build_request(messages=[{"role": "user", "content": "hi"}])
    assert chat.WhichOneof("input") == "chat" and chat.chat.messages[0].content == "hi"
    tokens = build_request(token_ids=[1, 2, 3], options=GenerateOptions(guardian_mode="incremental"))
    assert list(tokens.token_ids.ids) == [1, 2, 3]
    assert tokens.guardian.mode == options_pb2.GUARDIAN_MODE_INCREMENTAL


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "input: pass exactly one of prompt, messages, token_ids (got none)"),
        ({"prompt": "a", "token_ids": [1]}, "input: pass exactly one of prompt, messages, token_ids"),
    ],
)
def test_input_must_be_exactly_one(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        build_request(**kwargs)
    assert str(raised.value).startswith(message)


def test_unknown_policy_is_caught_before_sending() -> None:
    with pytest.raises(ValueError, match=r"^policy: unknown policy 'dense'"):
        GenerateOptions(policy="dense")


def test_client_never_imports_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lil_client, lil_client.cli; print('torch' in sys.modules, 'lil_sparse' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_allow_special_tokens_is_sent_only_when_given() -> None:
    assert not build_request("hi").HasField("allow_special_tokens")
    request = build_request("hi", options=GenerateOptions(allow_special_tokens=True))
    assert request.HasField("allow_special_tokens") and request.allow_special_tokens is True


def test_connection_checks_its_pairs_and_sends_the_token(tmp_path: Path) -> None:
    from lil_client import Connection

    with pytest.raises(ValueError, match=r"^cert_file: "):
        Connection(cert_file="client.pem")
    with pytest.raises(ValueError, match=r"^token: "):
        Connection(token="a", token_file="b")
    (tmp_path / "token").write_text(" abc\n")
    assert Connection(token_file=str(tmp_path / "token")).metadata() == (("authorization", "Bearer abc"),)
    assert Connection().metadata() == ()
    assert (Connection().uses_tls, Connection(ca_file="ca.pem").uses_tls, Connection(tls=True).uses_tls) == (
        False,
        True,
        True,
    )
