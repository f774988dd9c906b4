"""``lil-sparse generate --help`` names every flag's default, as ``lil-client generate --help`` does."""

from __future__ import annotations

import re

import pytest

from lil_sparse.cli.main import build_parser


def _generate_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["generate", "--help"])
    assert done.value.code == 0
    # argparse wraps help text at the terminal width; one line per flag is easier to match.
    return re.sub(r"\s+", " ", capsys.readouterr().out)


@pytest.mark.parametrize(
    "flag_help",
    [
        "--model MODEL model folder, .gguf file or known model name (default: smollm2-135m-instruct)",
        "--device DEVICE torch device: cpu, cuda, cuda:1, ... (default: cpu)",
        "--budget BUDGET KV tokens attended per decode step (default: 512)",
        "--temperature TEMPERATURE sampling temperature (0: greedy) (default: 0.0)",
        "--recent-tokens RECENT_TOKENS recent tokens kept (0: automatic) (default: 0)",
        "--guardian-interval GUARDIAN_INTERVAL Guardian: tokens between checks (default: 250)",
        "--warm-up {auto,on,off} run the engine's start-up warm-up first (auto: on for CUDA). Default "
        "off: one request gains nothing from it; on, the printed TTFT and TBT exclude kernel builds "
        "and graph captures (default: off)",
    ],
)
def test_generate_help_shows_defaults(flag_help: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert flag_help in _generate_help(capsys)


def test_unset_flags_show_no_default(capsys: pytest.CaptureFixture[str]) -> None:
    text = _generate_help(capsys)
    assert "--seed SEED sampling seed --stop STOP" in text  # seed None: no "(default: None)"
    assert "(default: None)" not in text and "(default: False)" not in text
