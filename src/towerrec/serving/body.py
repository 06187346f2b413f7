"""Strict JSON request bodies, and validation errors that always encode.

Python's `json` accepts what JSON does not: `NaN`, `Infinity`, `-Infinity`, numbers that overflow to infinity
(`1e309`) and escaped lone UTF-16 surrogates (`"\\ud800"`), which no UTF-8 response can echo. `parse_json`
refuses them with a 422 naming the field (`loc`), as well as syntax errors (`loc` is the character offset, as
FastAPI reports them), integers of more than 4,300 digits, nesting deeper than `MAX_DEPTH` levels (no request
of this API nests past 3) and bodies that are not UTF-8 (400; UTF-16 and UTF-32, which Python's `json`
would guess, included). `StrictJSONRoute` makes every route parse its body this way; its `guard`, when set,
answers before the route parses or validates the body (the reload token).

`encodable_errors` is what every 422 body goes through: `loc`, `msg` and `type` always (text that cannot be
encoded is escaped), the offending `input` and `ctx` only when they encode as JSON within `MAX_ECHO_BYTES`.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

MAX_DEPTH = 32  # arrays/objects inside each other
MAX_INT_DIGITS = 4300  # Python's own limit for int <-> str (sys.get_int_max_str_digits)
MAX_ECHO_BYTES = 1000  # an error echoes the offending input only up to this size
_SURROGATE = re.compile("[\ud800-\udfff]")


class BodyError(HTTPException):
    """A body that is not strict JSON. An HTTPException, so FastAPI's body reader passes it on untouched."""

    def __init__(self, loc: Iterable, msg: str, type: str = "json_invalid", status_code: int = 422):
        detail = msg if status_code != 422 else encodable_errors([{"loc": ("body", *loc), "msg": msg, "type": type}])
        super().__init__(status_code, detail=detail)


class _Refused:
    """A parsed value JSON does not allow, kept in place until its location is known."""

    def __init__(self, msg: str, type: str):
        self.msg, self.type = msg, type


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number (JSON numbers are finite)", "finite_number")


def _float(text: str) -> float | _Refused:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Refused(f"the number {cut(text)} is out of range (beyond +-1.8e308, it would be infinite)",
                    "finite_number")


def _int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _Refused(f"an integer of {len(text.lstrip('-'))} digits is too large (at most {MAX_INT_DIGITS})",
                        "int_parsing_size")
    return int(text)


def parse_json(body: bytes) -> Any:
    """The value of a strict JSON body (UTF-8); raises BodyError (see the module docstring)."""
    bom = len(codecs.BOM_UTF8) if body.startswith(codecs.BOM_UTF8) else 0  # ignored, as RFC 8259 allows
    try:
        text = body[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyError((), f"the body is not valid UTF-8 (byte {bom + e.start}); JSON bodies must be UTF-8",
                        status_code=400) from None
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as e:
        raise BodyError((e.pos,), f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise BodyError((), f"the JSON body is nested too deeply (at most {MAX_DEPTH} levels)") from None
    _check(value)
    return value


def _check(value: Any) -> None:
    """Raise BodyError at the first refused number, lone surrogate or level past MAX_DEPTH (iterative: a
    deep body cannot exhaust the stack)."""
    stack = [(value, (), 0)]
    while stack:
        v, loc, depth = stack.pop()
        if isinstance(v, _Refused):
            raise BodyError(loc, v.msg, v.type)
        if isinstance(v, str):
            if _SURROGATE.search(v):
                raise BodyError(loc, "the string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                                     "valid Unicode", "string_unicode")
            continue
        if isinstance(v, dict | list):
            if depth >= MAX_DEPTH:
                raise BodyError(loc, f"the JSON body is nested too deeply (at most {MAX_DEPTH} levels)")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for key, item in reversed(list(items)):
                if isinstance(key, str) and _SURROGATE.search(key):
                    raise BodyError((*loc, _text(key)), "a field name holds a lone UTF-16 surrogate "
                                    "(\\ud800-\\udfff), which is not valid Unicode", "string_unicode")
                stack.append((item, (*loc, key), depth + 1))


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = parse_json(await self.body())
        return self._strict_json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body is parsed by `parse_json`. Subclasses may set `guard(request)`: a response
    returned by it is sent instead of running the route, before the body is read or validated."""

    guard: Callable[[Request], Awaitable[Response | None]] | None = None

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler, guard = super().get_route_handler(), type(self).guard

        async def strict_handler(request: Request) -> Response:
            if guard is not None and (refusal := await guard(request)) is not None:
                return refusal
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


# ------------------------------------------------------------------------------------------ error bodies


def _text(value: Any) -> str:
    """Text that UTF-8 can encode: lone surrogates escaped."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def cut(text: str, limit: int = 40) -> str:
    """`text`, or its first `limit` characters and its length."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


_UNENCODABLE = object()


def _echo(value: Any) -> Any:
    """`value` as JSON-ready data when it encodes within MAX_ECHO_BYTES, else _UNENCODABLE."""
    try:
        data = jsonable_encoder(value)
        size = len(json.dumps(data, allow_nan=False, ensure_ascii=False).encode("utf-8"))
    except (ValueError, TypeError, UnicodeError, RecursionError):  # NaN, surrogates, bytes that are not UTF-8
        return _UNENCODABLE
    return data if size <= MAX_ECHO_BYTES else _UNENCODABLE


def encodable_errors(errors: Iterable[Mapping]) -> list[dict]:
    """Validation errors (pydantic's or ours) as a 422 `detail` that always encodes: `loc`, `msg`, `type`,
    and `input` / `ctx` only where they can be echoed."""
    out = []
    for error in errors:
        item = {"loc": [x if isinstance(x, int) and not isinstance(x, bool) else _text(x)
                        for x in error.get("loc", ())],
                "msg": _text(error.get("msg", "")), "type": _text(error.get("type", "value_error"))}
        if "input" in error and (value := _echo(error["input"])) is not _UNENCODABLE:
            item["input"] = value
        ctx = error.get("ctx")
        if isinstance(ctx, Mapping):  # e.g. {"error": ValueError(...)}: its text, not the object
            ctx = {_text(k): v if isinstance(v, int | float | str | bool | None) else _text(v) for k, v in ctx.items()}
            if (value := _echo(ctx)) is not _UNENCODABLE:
                item["ctx"] = value
        out.append(item)
    return out
