"""Sink types by their ``type`` tag: each sink module registers its config model and its class.

A sink module ends with one :func:`register_sink` call; ``streamer/sinks/__init__.py`` imports
every sink module, then assembles the config file's ``[[sinks]]`` union
(:func:`config_union`). :func:`create_sink` builds the sink of a config, :func:`parse_sink_spec`
reads a ``--sink`` string::

    jsonl:/var/log/maskrcnn-streamer/frames.jsonl   jsonl:-  (stdout)
    mqtt://user:pass@broker.local:1883/maskrcnn/{stream}/frames   mqtts://... (TLS)
    zmq:tcp://127.0.0.1:5556

Options that have no place in the spec go in a query string: ``mqtt://host/t?qos=1&mask_encoding=none``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, Union
from urllib.parse import parse_qsl

from pydantic import Field, ValidationError

from streamer.redact import redact_secrets
from streamer.sinks.base import Sink
from streamer.sinks.config import SinkSettings

C = TypeVar("C", bound=SinkSettings)


@dataclass(frozen=True)
class SinkType(Generic[C]):
    """One kind of sink: its ``type`` tag, config model, class and ``--sink`` forms."""

    name: str
    """The ``type`` tag of its ``[[sinks]]`` tables."""
    config: type[C]
    """Its config model: a :class:`SinkSettings` with ``type: Literal[name]``."""
    sink: Callable[[C], Sink]
    """Builds the (not yet started) sink of a config."""
    schemes: tuple[str, ...]
    """``--sink`` prefixes (the text before the first ``:``) that name this type."""
    spec_forms: tuple[str, ...]
    """The ``--sink`` forms, for error messages."""
    from_spec: Callable[[str, dict[str, Any]], C]
    """``(spec without its query, query options)`` → config; raises ValueError/ValidationError."""


_TYPES: dict[str, SinkType[Any]] = {}


def register_sink(kind: SinkType[C]) -> None:
    """Add a sink type; its tag and ``--sink`` prefixes must be new."""
    taken = {s for t in _TYPES.values() for s in t.schemes}
    if kind.name in _TYPES or taken & set(kind.schemes):
        raise ValueError(f"sink type {kind.name!r} or one of its prefixes {kind.schemes} is already registered")
    _TYPES[kind.name] = kind


def sink_types() -> tuple[SinkType[Any], ...]:
    """The registered sink types, in registration order."""
    return tuple(_TYPES.values())


def config_union() -> Any:
    """The ``[[sinks]]`` table model: the registered config models, discriminated by ``type``."""
    models = tuple(t.config for t in _TYPES.values())
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007 - built at run time


def create_sink(cfg: SinkSettings) -> Sink:
    """The sink for one ``[[sinks]]`` entry (not started: ``await sink.start()``)."""
    for kind in _TYPES.values():
        if type(cfg) is kind.config:
            return kind.sink(cfg)
    raise TypeError(f"no sink for config type {type(cfg).__name__}; expected one of "
                    f"{', '.join(t.config.__name__ for t in _TYPES.values())}")


def spec_help() -> str:
    """``expected jsonl:PATH, ... or zmq:tcp://HOST:PORT``: every registered ``--sink`` form."""
    forms = [f for t in _TYPES.values() for f in t.spec_forms]
    return f"expected {', '.join(forms[:-1])} or {forms[-1]}" if len(forms) > 1 else f"expected {forms[0]}"


def parse_sink_spec(spec: str) -> SinkSettings:
    """A ``--sink`` string → its sink config. ValueError names the spec and the accepted forms.

    A ``?key=value&...`` query sets further fields (``qos``, ``mask_encoding``, ``buffer``, ...),
    validated like the config file.
    """
    body, _, query = spec.partition("?")
    options: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    scheme, sep, rest = body.partition(":")
    if not sep or not rest:
        raise ValueError(f"bad sink spec {_redact_spec(spec)!r}: {spec_help()}")
    kind = next((t for t in _TYPES.values() if scheme in t.schemes), None)
    if kind is None:
        raise ValueError(f"bad sink spec {_redact_spec(spec)!r}: unknown sink type "
                         f"{redact_secrets(scheme)!r}; {spec_help()}")
    try:
        return kind.from_spec(body, options)
    except ValidationError as err:
        raise ValueError(f"bad sink spec {_redact_spec(spec)!r}: {_describe(err)}") from None
    except ValueError as err:
        raise ValueError(f"bad sink spec {_redact_spec(spec)!r}: {err}") from None


def _describe(err: ValidationError) -> str:
    """Pydantic errors as ``field: rule``, one per problem, without echoing input values."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg'].removeprefix('Value error, ')}"
        for e in err.errors(include_url=False)
    )


def _redact_spec(spec: str) -> str:
    scheme, sep, rest = spec.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return redact_secrets(f"{scheme}://***@{rest.split('@', 1)[1]}")
    return redact_secrets(spec)
