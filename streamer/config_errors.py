"""A pydantic validation error as one line per problem: ``origin: key.path = value: rule``.

The key path is the one a user writes in the TOML file (``sinks[0].port``: list indices in
brackets, the tags of ``type``-discriminated unions dropped). Secrets are never echoed.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from streamer.redact import REDACTED, is_secret_key, redact_secrets


def format_validation_error(err: ValidationError, root: type[BaseModel], origin: str) -> str:
    """One line per pydantic error: ``origin: key.path = value: what is allowed``.

    Secrets are never echoed: a table or list is not printed (only its key path), a secret key's
    value (``password``, ``token``, ...) is ``***``, and URL credentials and secret query values
    in anything printed are redacted.
    """
    lines = []
    for e in err.errors(include_url=False):
        path, parent = _key_path(root, e["loc"])
        where = f"{origin}: {path or '(top level)'}"
        key = str(e["loc"][-1]) if e["loc"] else ""
        if e["type"] == "missing":
            line = f"{where}: required key is missing"
        elif e["type"] == "extra_forbidden":
            allowed = ", ".join(parent.model_fields) if parent else "none"
            line = f"{where}{_shown(e['input'], key)}: unknown key; allowed keys here: {allowed}"
        elif e["type"] == "bool_type":
            line = f"{where}{_shown(e['input'], key)}: expected true or false (a TOML boolean, unquoted)"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            line = f"{where}{_shown(e['input'], key)}: {msg}"
        lines.append(redact_secrets(" ".join(line.split())))
    return "\n".join(lines)


def _key_path(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None]:
    """``("sinks", 0, "mqtt", "port")`` → ``("sinks[0].port", MqttSinkConfig)``: the readable path
    (union tags dropped) and the model that holds the last key."""
    path = ""
    parent: type[BaseModel] | None = None
    current: Any = root
    for part in loc:
        current = _unwrap_optional(current)
        if isinstance(part, int):
            path += f"[{part}]"
            args = get_args(current)
            current = args[0] if get_origin(current) is list and args else None
            continue
        members = _union_members(current)
        if members and part in members:  # discriminated union: the tag is not a key
            current = members[part]
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            parent = current
            field = current.model_fields.get(part)
            current = field.annotation if field else None
        else:
            parent = None
            current = None
        path += f".{part}" if path else part
    return path, parent


def _unwrap_optional(tp: Any) -> Any:
    args = get_args(tp)
    if args and get_origin(tp) is not list and type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    if get_origin(tp) is Annotated:
        return args[0]
    return tp


def _union_members(tp: Any) -> dict[str, type[BaseModel]]:
    """Tag value → model for a union of pydantic models discriminated by a ``type`` literal."""
    members: dict[str, type[BaseModel]] = {}
    for arg in get_args(tp):
        if isinstance(arg, type) and issubclass(arg, BaseModel) and "type" in arg.model_fields:
            for tag in get_args(arg.model_fields["type"].annotation):
                members[str(tag)] = arg
    return members


def _shown(value: Any, key: str, limit: int = 60) -> str:
    """`` = value`` for an error line: nothing for tables and lists (they may hold secrets),
    ``***`` for a secret key, else the value's repr, cut at ``limit`` characters."""
    if isinstance(value, dict | list | tuple):
        return ""
    if is_secret_key(key):
        return f" = {REDACTED}"
    text = repr(value)
    return f" = {text if len(text) <= limit else text[: limit - 3] + '...'}"
