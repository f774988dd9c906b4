"""SGLang request conversion: refusals name the field and show the value as the user wrote it."""

from __future__ import annotations

import pytest
from smg_grpc_proto.generated import sglang_scheduler_pb2 as sglang

from lil_sparse.options import RequestOptions
from server.errors import InvalidArgument
from server.smg.convert import options_from_request


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("min_p", 0.1, "min_p: not supported by lil-sparse (got 0.1)"),
        ("frequency_penalty", 0.3, "frequency_penalty: not supported by lil-sparse (got 0.3)"),
        ("repetition_penalty", 1.1, "repetition_penalty: not supported by lil-sparse (got 1.1)"),
        ("min_new_tokens", 5, "min_new_tokens: not supported by lil-sparse (got 5)"),
    ],
)
def test_unsupported_sampling_shows_the_value_as_written(field: str, value: float, message: str) -> None:
    request = sglang.GenerateRequest(request_id="r")  # min_p 0.1 is stored as float32 0.10000000149011612
    setattr(request.sampling_params, field, value)
    with pytest.raises(InvalidArgument) as raised:
        options_from_request(request, RequestOptions(), tokenizer=None)  # type: ignore[arg-type]
    assert str(raised.value) == message
