"""The README stays true: its settings table, its JSON examples and its commands match the code."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson

from schemas.codec import decode_request, decode_response
from streamscore.cli import make_parser
from worker.settings import setting_names

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in `language`."""
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_every_setting_is_in_the_settings_table() -> None:
    """Each environment variable the worker reads has a row in the README's table, and no row is stale."""
    table = set(re.findall(r"^\| `(STREAMSCORE_[A-Z_]+)` \|", README, flags=re.M))
    assert set(setting_names()) == table


def test_every_variable_the_readme_mentions_exists() -> None:
    """No STREAMSCORE_* name in the README is a setting the code does not read."""
    mentioned = set(re.findall(r"STREAMSCORE_[A-Z_]+[A-Z]", README))
    assert set() == mentioned - set(setting_names())


def test_the_request_example_is_a_valid_request() -> None:
    """The README's example request decodes, with its id, shape and data."""
    [example] = [block for block in code_blocks("json") if '"inputs"' in block]
    request = decode_request(example.encode())
    assert "order-17" == request.id
    assert (2, 4) == request.inputs[0].shape


def test_the_response_example_is_a_valid_response() -> None:
    """The README's example result decodes as a V2 response with labelled probabilities."""
    [example] = [block for block in code_blocks("json") if '"model_name"' in block]
    response = decode_response(example.encode())
    assert [0, 1, 2] == response.output("output_probability").parameters["labels"]
    assert (2, 3) == response.output("output_probability").data.shape
    assert orjson.loads(example)["model_version"] == response.model_version


def test_the_binary_output_example_is_a_valid_binary_result() -> None:
    """The README's binary result decodes once its placeholder is the 16 bytes it names."""
    [example] = [block for block in code_blocks("text") if "binary_data_size" in block]
    header = example[: example.index("<")].encode()
    value = header + np.array([0, 1], dtype="<i8").tobytes()

    response = decode_response(value, header_length=len(header))

    assert [0, 1] == response.output("output_label").data.tolist()
    assert (2, 3) == response.output("output_probability").data.shape


def test_every_streamscore_command_in_the_readme_parses() -> None:
    """Each `streamscore ...` line in the README's shell blocks is accepted by the CLI's parser."""
    parser = make_parser()
    commands = [
        line.split("#")[0].strip()
        for block in code_blocks("sh")
        for line in block.splitlines()
        if line.startswith("streamscore ")
    ]
    assert commands, "the README shows no streamscore command"
    for command in commands:
        parser.parse_args(command.split()[1:])
