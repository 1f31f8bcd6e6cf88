"""Routing a request to a loaded version (`Lineup.choose`) and a record's fate at admission (`admit`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import pytest

from artifacts.runtime import LoadedModel, load_model
from demo.models import install_model, make_mlp
from schemas import headers as h
from schemas.codec import Limits
from schemas.control import Canary, DesiredState, canary_share
from schemas.errors import DecodeError, ModelNotFoundError, ValidationError
from tests.factories import make_record, v2_body, v2_input
from worker.admit import Admitted, Load, admit, admit_loaded
from worker.lineup import Chosen, Key, Lineup, Missing
from worker.outcomes import DeadLetter


def an_id(low: float, high: float) -> str:
    """The first request id `req-<n>` whose canary share lies in [low, high)."""
    return next(i for i in (f"req-{n}" for n in count()) if low <= canary_share(i) < high)


CANARY_ID, CURRENT_ID = an_id(0.0, 0.5), an_id(0.5, 1.0)  # routes of a canary at weight 0.5
EDGE_ID = an_id(0.2, 0.8)  # a canary whose weight is exactly this id's share does not take it
CURRENT_1 = DesiredState("mlp", current="1")
CANARY = DesiredState("mlp", current="1", canary=Canary("2", 0.5))
SHADOW = DesiredState("mlp", current="1", shadow="3")
CANARY_SHADOW = DesiredState("mlp", current="1", canary=Canary("2", 0.5), shadow="3")
AT_EDGE = DesiredState("mlp", current="1", canary=Canary("2", canary_share(EDGE_ID)))
NO_CURRENT = DesiredState("mlp", previous=("1",))
UNLOADED_SHADOW, UNLOADED_CURRENT = DesiredState("mlp", current="1", shadow="4"), DesiredState("mlp", current="4")
UNLOADED_CANARY = DesiredState("mlp", current="1", canary=Canary("4", 0.5))


@dataclass(frozen=True)
class Given:
    """What a lineup over model `mlp` (the default model) holds."""

    loaded: tuple[str, ...] = ("1", "2", "3")
    state: DesiredState | None = None
    defaults: Mapping[str, str] = field(default_factory=lambda: {"mlp": "3"})
    refused: Mapping[Key, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1, 2 and 3 of the MLP (FP32 x [N, 8]), each with different weights."""
    root = tmp_path_factory.mktemp("models")
    for version in ("1", "2", "3"):
        install_model(root, "mlp", version, make_mlp, scale=float(version))
    return root


@pytest.fixture(scope="module")
def models(root: Path) -> dict[str, LoadedModel]:
    """Versions 1, 2 and 3, loaded once for the module."""
    return {v: load_model(root / "mlp" / v / "model.onnx", "mlp", v) for v in ("1", "2", "3")}


def lineup_of(models: Mapping[str, LoadedModel], given: Given) -> Lineup:
    return Lineup(
        "mlp",
        loaded={("mlp", v): models[v] for v in given.loaded},
        refused=given.refused,
        states={} if given.state is None else {"mlp": given.state},
        defaults=given.defaults,
    )


def choice(lineup: Lineup, name: str | None, pinned: str | None, request_id: str) -> object:
    """What `choose` says, comparable: ("chosen", version, shadow version), a Missing, or ("not found", why)."""
    try:
        chosen = lineup.choose(name, pinned, request_id)
    except ModelNotFoundError as error:
        return ("not found", str(error))
    if isinstance(chosen, Missing):
        return chosen
    return ("chosen", chosen.model.version, None if chosen.shadow is None else chosen.shadow.version)


@pytest.mark.parametrize(
    ("given", "name", "pinned", "request_id", "expected"),
    [
        pytest.param(Given(), None, None, "r", ("chosen", "3", None), id="default-model-default-version"),
        pytest.param(Given(defaults={}), None, None, "r", Missing("mlp", None), id="no-default-version-yet"),
        pytest.param(Given(), "other", None, "r", Missing("other", None), id="other-model-without-default"),
        pytest.param(Given(defaults={"mlp": "4"}), None, None, "r", Missing("mlp", "4"), id="default-not-loaded"),
        pytest.param(Given(state=SHADOW), None, "1", CURRENT_ID, ("chosen", "1", None), id="pinned-has-no-shadow"),
        pytest.param(Given(state=CURRENT_1), "mlp", "2", "r", ("chosen", "2", None), id="pinned-over-state"),
        pytest.param(
            Given(refused={("mlp", "4"): "sha256 mismatch"}),
            None,
            "4",
            "r",
            ("not found", "model mlp version 4 cannot be served: sha256 mismatch"),
            id="pinned-refused",
        ),
        pytest.param(
            Given(),
            None,
            "../1",
            "r",
            ("not found", "model version '../1' is not a valid version name"),
            id="pinned-bad",
        ),
        pytest.param(Given(), None, "4", "r", Missing("mlp", "4"), id="pinned-not-loaded"),
        pytest.param(Given(state=CURRENT_1), None, None, "r", ("chosen", "1", None), id="state-current"),
        pytest.param(Given(state=NO_CURRENT), None, None, "r", ("chosen", "3", None), id="state-without-current"),
        pytest.param(Given(state=CANARY), None, None, CANARY_ID, ("chosen", "2", None), id="canary-below-weight"),
        pytest.param(Given(state=CANARY), None, None, CURRENT_ID, ("chosen", "1", None), id="canary-above-weight"),
        pytest.param(Given(state=AT_EDGE), None, None, EDGE_ID, ("chosen", "1", None), id="canary-at-weight"),
        pytest.param(Given(state=SHADOW), None, None, CURRENT_ID, ("chosen", "1", "3"), id="shadow-on-current"),
        pytest.param(Given(state=CANARY_SHADOW), None, None, CANARY_ID, ("chosen", "2", None), id="no-shadow-canary"),
        pytest.param(
            Given(state=CANARY_SHADOW), None, None, CURRENT_ID, ("chosen", "1", "3"), id="shadow-beside-canary"
        ),
        pytest.param(Given(state=UNLOADED_SHADOW), None, None, "r", ("chosen", "1", None), id="shadow-not-loaded"),
        pytest.param(Given(state=UNLOADED_CURRENT), None, None, "r", Missing("mlp", "4"), id="current-not-loaded"),
        pytest.param(Given(state=UNLOADED_CANARY), None, None, CANARY_ID, Missing("mlp", "4"), id="canary-not-loaded"),
    ],
)
def test_choose(
    models: dict[str, LoadedModel],
    given: Given,
    name: str | None,
    pinned: str | None,
    request_id: str,
    expected: object,
) -> None:
    """A pin wins, else the desired state routes (canary by share, shadow beside current), else the default."""
    assert expected == choice(lineup_of(models, given), name, pinned, request_id)


def test_a_canary_takes_exactly_the_ids_whose_share_is_below_its_weight(models: dict[str, LoadedModel]) -> None:
    """Over 200 ids, version 2 at weight 0.3 scores exactly those with canary_share(id) < 0.3."""
    lineup = lineup_of(models, Given(state=DesiredState("mlp", current="1", canary=Canary("2", 0.3))))
    ids = [f"id-{n}" for n in range(200)]

    routed = {i for i in ids if choice(lineup, None, None, i) == ("chosen", "2", None)}

    assert {i for i in ids if canary_share(i) < 0.3} == routed
    assert 0 < len(routed) < len(ids)


def test_any_id_routes_even_one_utf8_cannot_encode(models: dict[str, LoadedModel]) -> None:
    """An id holding a lone surrogate (decoding refuses it; routing must not raise on it either) has a share."""
    lineup = lineup_of(models, Given(state=CANARY))

    assert 0.0 <= canary_share("\ud800") < 1.0
    assert choice(lineup, None, None, "\ud800") in (("chosen", "1", None), ("chosen", "2", None))
    as_utf8 = int.from_bytes(hashlib.blake2b("r\u00e9q".encode(), digest_size=8).digest(), "big") / 2**64
    assert as_utf8 == canary_share("r\u00e9q")  # any other text hashes its UTF-8 bytes, as before


def request(request_id: str = "req", shape: tuple[int, int] = (1, 8)) -> bytes:
    return v2_body(v2_input("x", "FP32", list(shape), [0.5] * (shape[0] * shape[1])), id=request_id)


def fate(outcome: object) -> object:
    """An admission's fate, comparable: items as (version, shadow, id), an error type, or what to load."""
    if isinstance(outcome, Admitted):
        items = [outcome.item] if outcome.twin is None else [outcome.item, outcome.twin]
        return ("admitted", *((i.model.version, i.shadow, i.request_id) for i in items))
    if isinstance(outcome, DeadLetter):
        return ("dead letter", type(outcome.error))
    assert isinstance(outcome, Load)
    return ("load", outcome.name, outcome.version)


@pytest.mark.parametrize(
    ("given", "value", "headers", "expected"),
    [
        pytest.param(Given(), b"not json", (), ("dead letter", DecodeError), id="undecodable"),
        pytest.param(Given(), None, (), ("dead letter", DecodeError), id="null-value"),
        pytest.param(Given(), request(shape=(1, 4)), (), ("dead letter", ValidationError), id="wrong-shape"),
        pytest.param(Given(), request(), (), ("admitted", ("3", False, "req")), id="valid"),
        pytest.param(
            Given(state=SHADOW),
            request(CURRENT_ID),
            (),
            ("admitted", ("1", False, CURRENT_ID), ("3", True, CURRENT_ID)),
            id="valid-with-shadow-twin",
        ),
        pytest.param(
            Given(state=CANARY_SHADOW), request(CANARY_ID), (), ("admitted", ("2", False, CANARY_ID)), id="canary"
        ),
        pytest.param(Given(), request(), ((h.MODEL, b"other"),), ("load", "other", None), id="unknown-model"),
        pytest.param(Given(), request(), (("mlserver-version", b"2"),), ("admitted", ("2", False, "req")), id="alias"),
        pytest.param(Given(), request(), ((h.MODEL_VERSION, b"4"),), ("load", "mlp", "4"), id="pinned-not-loaded"),
        pytest.param(
            Given(refused={("mlp", "4"): "bad"}),
            request(),
            ((h.MODEL_VERSION, b"4"),),
            ("dead letter", ModelNotFoundError),
            id="pinned-refused",
        ),
        pytest.param(Given(), request(), ((h.MODEL_VERSION, b"../1"),), ("dead letter", ModelNotFoundError), id="bad"),
    ],
)
def test_admit(
    models: dict[str, LoadedModel],
    given: Given,
    value: bytes | None,
    headers: tuple[tuple[str, bytes]],
    expected: object,
) -> None:
    """A record is admitted (with a shadow twin), dead-lettered, or waits for a version to load."""
    assert expected == fate(admit(make_record(value, headers=headers), Limits(), lineup_of(models, given)))


def test_a_request_that_does_not_fit_is_dead_lettered_with_its_model(
    root: Path, models: dict[str, LoadedModel]
) -> None:
    """A [1, 4] request for the [N, 8] model names the model it was meant for: name, version, sha256."""
    letter = admit(make_record(request(shape=(1, 4))), Limits(), lineup_of(models, Given()))

    assert isinstance(letter, DeadLetter)
    sha256 = hashlib.sha256((root / "mlp" / "3" / "model.onnx").read_bytes()).hexdigest()
    assert ("mlp", "3", sha256) == letter.model


class BrokenLineup(Lineup):
    """A lineup whose routing raises, as a bug of ours would."""

    def choose(self, name: str | None, pinned: str | None, request_id: str) -> Chosen | Missing:
        raise RuntimeError("a bug in routing")


def test_a_record_whose_routing_raises_is_dead_lettered() -> None:
    """Routing that raises something outside the error tree dead-letters the record (stage
    validate, the error as its cause) instead of stopping the fetch loop."""
    letter = admit(make_record(request()), Limits(), BrokenLineup("mlp"))

    assert isinstance(letter, DeadLetter)
    assert "the request could not be routed to a model: RuntimeError('a bug in routing')" == str(letter.error)
    assert ("validate", RuntimeError) == (letter.error.stage, type(letter.error.__cause__))  # type: ignore[attr-defined]


def test_admit_loaded_dead_letters_the_problem_the_load_met(models: dict[str, LoadedModel]) -> None:
    """A load that failed turns the record into a dead letter carrying that very error."""
    record = make_record(request(), headers=((h.MODEL_VERSION, b"4"),))
    load = admit(record, Limits(), lineup_of(models, Given()))
    assert isinstance(load, Load)
    problem = ModelNotFoundError("model 'mlp' has no version '4'; available: 1, 2, 3")

    letter = admit_loaded(load, lineup_of(models, Given()), problem)

    assert isinstance(letter, DeadLetter)
    assert (record, problem) == (letter.record, letter.error)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(((h.MODEL_VERSION, b"4"),), "model mlp version 4 is not loaded", id="pinned"),
        pytest.param(((h.MODEL, b"other"),), "model other version default is not loaded", id="default"),
    ],
)
def test_admit_loaded_never_asks_for_a_load_again(
    models: dict[str, LoadedModel], headers: tuple[tuple[str, bytes]], expected: str
) -> None:
    """When the lineup still lacks the version after the load, the record is dead-lettered, not loaded again."""
    lineup = lineup_of(models, Given())
    load = admit(make_record(request(), headers=headers), Limits(), lineup)
    assert isinstance(load, Load)

    letter = admit_loaded(load, lineup, None)

    assert isinstance(letter, DeadLetter)
    assert (ModelNotFoundError, expected) == (type(letter.error), str(letter.error))


def test_admit_loaded_admits_once_the_version_is_loaded(models: dict[str, LoadedModel]) -> None:
    """A record pinning version 3, loaded meanwhile, is admitted for version 3."""
    load = admit(make_record(request(), headers=((h.MODEL_VERSION, b"3"),)), Limits(), lineup_of(models, Given(("1",))))
    assert ("load", "mlp", "3") == fate(load)
    assert isinstance(load, Load)

    assert ("admitted", ("3", False, "req")) == fate(admit_loaded(load, lineup_of(models, Given()), None))


@pytest.mark.parametrize(
    ("value", "headers", "expected"),
    [
        pytest.param(request(shape=(5, 8)), [], ("mlp", "3"), id="too-many-rows-default-model"),
        pytest.param(request(shape=(5, 8)), [(h.MODEL_VERSION, b"2")], ("mlp", "2"), id="too-many-rows-pinned"),
        pytest.param(request(), [(h.MODEL_VERSION, b"9")], ("mlp", "9"), id="pinned-version-that-does-not-load"),
    ],
)
def test_validate_stage_dead_letters_name_the_model_when_it_is_known(
    models: dict[str, LoadedModel], value: bytes, headers: list[tuple[str, bytes]], expected: tuple[str, str]
) -> None:
    """Past a limit (more rows than allowed) or pinned to a version refused at load, the dead letter still
    says which model and version the record was meant for."""
    lineup = lineup_of(models, Given(refused={("mlp", "9"): "corrupted"}))

    letter = admit(make_record(value, headers=headers), Limits(max_request_rows=4), lineup)

    assert isinstance(letter, DeadLetter)
    assert "validate" == letter.error.stage  # type: ignore[attr-defined]
    assert letter.model is not None and expected == letter.model[:2]
