"""Decode flyteidl2 literals into plain JSON-able Python values, for display and ``--json`` output."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

from flyteidl2.core import literals_pb2
from flyteidl2.task import common_pb2
from google.protobuf import json_format


def literal_to_python(literal: literals_pb2.Literal) -> Any:
    kind = literal.WhichOneof("value")
    if kind == "scalar":
        return _scalar(literal.scalar)
    if kind == "collection":
        return [literal_to_python(item) for item in literal.collection.literals]
    if kind == "map":
        return {key: literal_to_python(value) for key, value in sorted(literal.map.literals.items())}
    if kind == "offloaded_metadata":
        return {"uri": literal.offloaded_metadata.uri}
    return None


def _scalar(scalar: literals_pb2.Scalar) -> Any:
    kind = scalar.WhichOneof("value")
    if kind == "primitive":
        primitive = scalar.primitive
        which = primitive.WhichOneof("value")
        if which == "datetime":
            return primitive.datetime.ToDatetime(tzinfo=dt.timezone.utc).isoformat()
        if which == "duration":
            return primitive.duration.ToTimedelta().total_seconds()
        return getattr(primitive, which) if which else None
    if kind == "none_type":
        return None
    if kind == "union":
        return literal_to_python(scalar.union.value)
    if kind == "binary":
        if scalar.binary.tag == "msgpack":
            try:
                import msgpack

                return msgpack.unpackb(scalar.binary.value, raw=False)
            except Exception:  # noqa: BLE001 - fall back to the raw bytes
                pass
        return {"binary": base64.b64encode(scalar.binary.value).decode(), "tag": scalar.binary.tag}
    if kind == "blob":
        return {"uri": scalar.blob.uri}
    if kind == "structured_dataset":
        return {"uri": scalar.structured_dataset.uri}
    if kind == "generic":
        return json_format.MessageToDict(scalar.generic)
    if kind == "error":
        return {"error": scalar.error.message}
    if kind == "schema":
        return {"uri": scalar.schema.uri}
    return None


def named_literals_to_dict(named: list[common_pb2.NamedLiteral]) -> dict[str, Any]:
    return {item.name: literal_to_python(item.value) for item in named}


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_outputs(path: str, read: Callable[[str], bytes] = _read_file) -> dict[str, Any] | None:
    """``outputs.pb`` (flyteidl2.task.Outputs) as name → value; None when the file is absent. ``read``: how
    to read it where it is (engine/data_store.py), a local file by default."""
    try:
        data = read(path)
    except FileNotFoundError:
        return None
    return outputs_to_dict(data)


def outputs_to_dict(data: bytes) -> dict[str, Any]:
    """An ``outputs.pb``'s bytes as name → value."""
    outputs = common_pb2.Outputs()
    outputs.ParseFromString(data)
    return named_literals_to_dict(list(outputs.literals))


def inputs_message(path: str, read: Callable[[str], bytes] = _read_file) -> common_pb2.Inputs:
    """``inputs.pb`` as the flyteidl2 message (OSError when it cannot be read)."""
    inputs = common_pb2.Inputs()
    inputs.ParseFromString(read(path))
    return inputs


def read_inputs(path: str, read: Callable[[str], bytes] = _read_file) -> dict[str, Any] | None:
    try:
        inputs = inputs_message(path, read)
    except FileNotFoundError:
        return None
    return named_literals_to_dict(list(inputs.literals))


def primitive_literal(value: Any) -> literals_pb2.Literal:
    """A literal for a plain bool/int/float/str (used by the sleep plugin's inputs and by tests)."""
    if isinstance(value, bool):
        primitive = literals_pb2.Primitive(boolean=value)
    elif isinstance(value, int):
        primitive = literals_pb2.Primitive(integer=value)
    elif isinstance(value, float):
        primitive = literals_pb2.Primitive(float_value=value)
    elif isinstance(value, str):
        primitive = literals_pb2.Primitive(string_value=value)
    else:
        raise TypeError(f"not a primitive: {type(value).__name__}")
    return literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=primitive))


def rewrite_uris(literal: literals_pb2.Literal, swap, binary=None) -> None:
    """Every blob and DataFrame URI in ``literal`` (through collections, maps and unions) set to
    ``swap(uri)``; ``binary(scalar.binary)`` for msgpack values, whose File/Dir fields are not literals."""
    kind = literal.WhichOneof("value")
    if kind == "collection":
        for item in literal.collection.literals:
            rewrite_uris(item, swap, binary)
    elif kind == "map":
        for item in literal.map.literals.values():
            rewrite_uris(item, swap, binary)
    elif kind == "scalar":
        scalar = literal.scalar
        which = scalar.WhichOneof("value")
        if which == "union":
            rewrite_uris(scalar.union.value, swap, binary)
        elif which in ("blob", "structured_dataset"):
            holder = getattr(scalar, which)
            holder.uri = swap(holder.uri)
        elif which == "binary" and binary is not None:
            binary(scalar.binary)
