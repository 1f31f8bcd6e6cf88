"""Check a decoded request against the signature of the model that will score it."""

from __future__ import annotations

from artifacts.runtime import LoadedModel
from schemas.codec import InferenceRequest
from schemas.errors import ValidationError


def check_request(request: InferenceRequest, model: LoadedModel) -> None:
    """Raise ValidationError unless `request` fits `model`: names, datatypes, shapes, outputs."""
    sent = {tensor.name for tensor in request.inputs}
    unknown = sorted(sent - model.input_by_name.keys())
    if unknown:
        raise ValidationError(
            f"unknown input {', '.join(map(repr, unknown))} for model {model.name} "
            f"version {model.version}; it takes {', '.join(map(repr, model.input_by_name))}"
        )
    missing = [name for name in model.input_by_name if name not in sent]
    if missing:
        raise ValidationError(f"missing input {', '.join(map(repr, missing))} for model {model.name}")
    for tensor in request.inputs:
        spec = model.input_by_name[tensor.name]
        if tensor.datatype != spec.datatype:
            raise ValidationError(
                f"input {tensor.name!r} is {tensor.datatype}; model {model.name} "
                f"version {model.version} takes {spec.datatype}"
            )
        if not _shape_fits(tensor.shape, spec.shape):
            raise ValidationError(
                f"input {tensor.name!r} has shape {list(tensor.shape)}; model {model.name} "
                f"version {model.version} takes {_show(spec.shape)}"
            )
    unknown_outputs = [name for name in request.outputs if name not in model.output_names]
    if unknown_outputs:
        raise ValidationError(
            f"unknown output {', '.join(map(repr, unknown_outputs))}; model {model.name} "
            f"gives {', '.join(map(repr, model.output_names))}"
        )


def _shape_fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    if len(shape) != len(expected):
        return False
    return all(want is None or want == got for got, want in zip(shape, expected, strict=True))


def _show(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"
