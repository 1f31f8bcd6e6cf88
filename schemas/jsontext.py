"""A record value read as JSON text: strictly, NaN and Infinity on request, and why a value is not JSON.

orjson reads every value first; it follows RFC 8259 and refuses text that UTF-8 cannot encode.
Python's json module reads what orjson refuses, for the NaN and Infinity literals it writes
itself, and nothing else: a value it reads is accepted only when it holds such a literal (and
`allow_nonfinite`) and every string in it can be encoded as UTF-8. A lone surrogate (the escape
`\\ud800` without its pair) cannot, and every later step encodes the request's text (canary
routing hashes the id, logs and results write it), so it is refused here.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from schemas.errors import DecodeError, ValidationError
from schemas.headers import BINARY_HEADER_LENGTH

_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # never in JSON text, common in binary data


def load_json(text: bytes, *, allow_nonfinite: bool, binary: bool) -> Any:
    """The JSON value of `text`, or DecodeError / ValidationError (NaN or Infinity not allowed).

    `binary`: the value is the JSON header of a request with binary data (no hint about the
    binary length header when it is not JSON).
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        strict_error = error
    nonfinite: list[float] = []

    def number(literal: str) -> float:
        value = float(literal)  # NaN, Infinity, and numbers too large for a double (1e400)
        if not math.isfinite(value):
            nonfinite.append(value)
        return value

    try:
        body = json.loads(text, parse_constant=number, parse_float=number)
    except (ValueError, UnicodeDecodeError):
        raise not_json(text, strict_error, binary) from None
    if not nonfinite:  # json read what orjson refused for another reason (a BOM, a lone surrogate): not NaN
        raise not_json(text, strict_error, binary)
    if not allow_nonfinite:
        raise ValidationError(
            "the request holds NaN or Infinity; finite numbers only "
            "(setting STREAMSCORE_ALLOW_NONFINITE=true accepts them)"
        )
    _check_text(body)
    return body


def not_json(text: bytes, error: Exception, binary: bool) -> DecodeError:
    """The DecodeError of a value that is not JSON; it names the binary length header when the value looks binary."""
    message = f"the record value is not valid JSON: {error}"
    if not binary and looks_binary(text):
        message += (
            f"; it looks binary: a request with binary tensor data needs the record header {BINARY_HEADER_LENGTH}"
            " (the length in bytes of the JSON header before the data)"
        )
    return DecodeError(message)


def looks_binary(text: bytes) -> bool:
    """True if `text` is not valid UTF-8 or holds a control byte that JSON text never holds raw."""
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return _CONTROL_BYTES.search(text) is not None


def _check_text(body: Any) -> None:
    """DecodeError if some string of `body` cannot be encoded as UTF-8, naming the member that holds it."""
    if type(body) is not dict:
        return  # not a V2 request: refused as such, with no text of its own in the message
    for key, member in body.items():
        if not _encodes(key) or _holds_unencodable(member):
            shown = key.encode("utf-8", "backslashreplace").decode("ascii", "replace")
            raise DecodeError(
                f"'{shown}' holds text that cannot be encoded as UTF-8 (a lone surrogate): a JSON escape"
                " such as \\ud800 must be followed by its pair; send valid Unicode text"
            )


def _holds_unencodable(value: Any) -> bool:
    stack = [value]
    while stack:  # a loop, not recursion: JSON nests deeper than Python's recursion limit
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if not _encodes(item):
                return True
        elif kind is list:
            stack.extend(item)
        elif kind is dict:
            stack.extend(item)  # the keys
            stack.extend(item.values())
    return False


def _encodes(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
