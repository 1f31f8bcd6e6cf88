"""The command line: what it accepts, and what it refuses to take where `ps` would show it."""

from __future__ import annotations

import pytest

from streamscore.cli import make_parser


def test_the_worker_takes_no_password_on_its_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`--sasl-password` is not a flag of `streamscore worker` (a command line shows in `ps`)."""
    with pytest.raises(SystemExit):
        make_parser().parse_args(["worker", "--sasl-password", "secret"])

    assert "unrecognized arguments: --sasl-password" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["worker", "produce", "collect"])
def test_a_password_file_is_taken_by_every_client_command(command: str) -> None:
    """`--sasl-password-file` names the file that holds the password, for the worker and the clients."""
    required = {"worker": [], "produce": ["--file", "rows.csv"], "collect": ["--expect", "1", "--out", "x.csv"]}

    args = make_parser().parse_args([command, *required[command], "--sasl-password-file", "/run/secrets/kafka"])

    assert "/run/secrets/kafka" == args.sasl_password_file
