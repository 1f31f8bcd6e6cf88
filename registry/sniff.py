"""What a file is, by its content, when it is not an ONNX model: `sniff_foreign` and its detectors.

`model push` refuses such files before parsing them, saying what they are (a pickle, a zip archive,
HDF5, NumPy, safetensors, TFLite, gzip, text or JSON) and what to do instead. Names never count:
only bytes do, and nothing is ever loaded (a pickle is decoded opcode by opcode, never run).
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ModelLoadError

TEXT_SAMPLE_BYTES = 4096
EXPORT_ADVICE = "export the model to ONNX (torch.onnx.export, tf2onnx, skl2onnx) and push the .onnx file"
PICKLE_ADVICE = f"streamscore never loads pickles (loading one runs arbitrary code); {EXPORT_ADVICE}"
# the opcodes a protocol 0 or 1 pickle starts with (a pre-filter: pickletools confirms)
OLD_PICKLE_FIRST_BYTES = frozenset(b"(}])cNIFLSVKJMUTXG")


@dataclass(frozen=True)
class Foreign:
    """What a file is instead of an ONNX model, and what the user should do about it."""

    what: str
    advice: str = EXPORT_ADVICE  # "{path}" in it becomes the file's path


def refuse_foreign(path: Path, data: bytes) -> None:
    """ModelLoadError naming what `data` is, when its content shows it is not an ONNX model."""
    found = sniff_foreign(data)
    if found is not None:
        advice = found.advice.replace("{path}", str(path))
        raise ModelLoadError(f"{path} is {found.what}, not an ONNX model; {advice}")


def sniff_foreign(data: bytes) -> Foreign | None:
    """What `data` is when its bytes say it is not ONNX; None when it may be ONNX."""
    for detect in DETECTORS:
        found = detect(data)
        if found is not None:
            return found
    return None


def _empty(data: bytes) -> Foreign | None:
    return None if data else Foreign("empty (0 bytes)", f"the export did not finish; {EXPORT_ADVICE}")


MAGIC_NUMBERS = (
    (b"\x89HDF\r\n\x1a\n", Foreign("an HDF5 file (Keras .h5 or weights)")),
    (b"\x93NUMPY", Foreign("a NumPy array (.npy): weights without a graph")),
    (b"\x1f\x8b", Foreign("gzip-compressed", "decompress it (gunzip -k {path}) and push the .onnx file inside")),
)


def _magic(data: bytes) -> Foreign | None:
    return next((foreign for magic, foreign in MAGIC_NUMBERS if data.startswith(magic)), None)


def _zip(data: bytes) -> Foreign | None:
    if not data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return None
    try:  # reads the archive's directory only, never a member
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        names = []
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return Foreign("a PyTorch checkpoint (a zip archive of pickles)", PICKLE_ADVICE)
    if any(n.endswith(".weights.h5") for n in names):
        return Foreign("a Keras model archive (.keras)")
    return Foreign(
        "a zip archive (PyTorch .pt, Keras .keras, a compressed joblib?)",
        f"{EXPORT_ADVICE}; if the archive holds an .onnx file, extract it and push that",
    )


def _pickle(data: bytes) -> Foreign | None:
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return Foreign(f"a Python pickle (protocol {data[1]})", PICKLE_ADVICE)
    if data[:1] and data[0] in OLD_PICKLE_FIRST_BYTES and data.endswith(b".") and _parses_as_pickle(data):
        return Foreign("a Python pickle (protocol 0 or 1)", PICKLE_ADVICE)
    return None


def _parses_as_pickle(data: bytes) -> bool:
    """Whether `data` is a sequence of pickle opcodes ending in STOP (decoded, never executed)."""
    try:
        last = None
        for opcode, _, position in pickletools.genops(data):
            last = (opcode.name, position)
    except Exception:  # any decoding failure: not a pickle
        return False
    return last == ("STOP", len(data) - 1)


def _safetensors(data: bytes) -> Foreign | None:
    header = int.from_bytes(data[:8], "little")
    if len(data) > 9 and 2 <= header <= len(data) - 8 and data[8:9] == b"{":
        return Foreign("safetensors weights: tensors without a graph")
    return None


def _tflite(data: bytes) -> Foreign | None:
    return Foreign("a TensorFlow Lite model") if data[4:8] == b"TFL3" else None


def _text(data: bytes) -> Foreign | None:
    sample = data[:TEXT_SAMPLE_BYTES]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as error:
        if len(data) <= TEXT_SAMPLE_BYTES or error.start < len(sample) - 3:
            return None
        text = sample[: error.start].decode("utf-8")  # the sample cut a character in two
    if not all(char.isprintable() or char in "\t\r\n" for char in text):
        return None
    start = text.lstrip("\ufeff \t\r\n")[:1]
    if start == "<" and "ir_version" in text:
        return Foreign("ONNX in its text form", "parse it with onnx.parser.parse_model, save it with onnx.save_model")
    advice = "ONNX models are binary protobuf: push the .onnx file the exporter wrote"
    return Foreign("JSON text" if start in ("{", "[") and _is_json(data) else "plain text", advice)


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:  # includes UnicodeDecodeError
        return False
    return True


DETECTORS: tuple[Callable[[bytes], Foreign | None], ...] = (
    _empty,
    _magic,
    _zip,
    _pickle,  # before _text: protocol 0 pickles are text
    _safetensors,
    _tflite,
    _text,
)
