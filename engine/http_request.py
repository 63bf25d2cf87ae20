"""Reading an API request: its JSON object and query string, every field with its type and bounds.

A field that is missing, of the wrong type or out of bounds is an ``HttpError`` (400) naming it, so no
ill-typed value reaches a service (and no TypeError or OverflowError comes back as a 500).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import parse_qs

MAX_TEXT = 4096
MAX_KEYS = 10_000


class HttpError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON")


class Request:
    """A request's JSON object and query string, read with types and bounds (400 naming the field)."""

    def __init__(self, body: bytes, query_string: bytes):
        try:
            payload = json.loads(body, parse_constant=_reject_constant) if body.strip() else {}
        except RecursionError:
            raise HttpError(400, "the JSON body is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise HttpError(400, "the JSON body must be an object")
        self.body: dict[str, Any] = payload
        try:
            self.query = {k: v[-1] for k, v in parse_qs(query_string.decode(), strict_parsing=False).items()}
        except UnicodeDecodeError:
            raise HttpError(400, "the query string is not UTF-8") from None

    def text(self, name: str, default: str | None = None, *, max_len: int = MAX_TEXT) -> str | None:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, str) or len(value) > max_len or "\x00" in value:
            raise HttpError(400, f"{name} must be text of at most {max_len} characters", name)
        return value

    def name(self, name: str, default: str | None = None) -> Any:
        """A project, domain or run name as sent: ``engine/names.py`` judges it, whatever its type."""
        value = self.body.get(name)
        return default if value is None else value

    def flag(self, name: str) -> bool:
        value = self.body.get(name, False)
        if not isinstance(value, bool):
            raise HttpError(400, f"{name} must be true or false", name)
        return value

    def texts(self, name: str, *, max_items: int = MAX_KEYS) -> list[str] | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not (isinstance(value, list) and len(value) <= max_items
                and all(isinstance(v, str) and len(v) <= MAX_TEXT for v in value)):
            raise HttpError(400, f"{name} must be a list of at most {max_items} strings", name)
        return value

    def blob(self, name: str, *, required: bool = False) -> bytes:
        value = self.body.get(name)
        if value is None or value == "":
            if required:
                raise HttpError(400, f"{name} is required (base64 of the serialized message)", name)
            return b""
        if not isinstance(value, str):
            raise HttpError(400, f"{name} must be a base64 string", name)
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise HttpError(400, f"{name} is not valid base64", name) from None

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        raw = self.query.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not minimum <= value <= maximum:  # NaN fails both comparisons
            raise HttpError(400, f"{name} must be a number from {minimum:g} to {maximum:g}", name)
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self.query.get(name)
        if raw is None:
            return default
        if not re.fullmatch(r"-?\d{1,12}", raw) or not minimum <= int(raw) <= maximum:
            raise HttpError(400, f"{name} must be a whole number from {minimum} to {maximum}", name)
        return int(raw)
