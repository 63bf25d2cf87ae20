"""The pydantic TaskAction and the shipped CRD agree, field by field."""

from __future__ import annotations

import datetime as dt
import types
import typing
from pathlib import Path

import pytest
import yaml

from engine.model import TaskAction, TaskActionSpec, TaskActionStatus
from helpers import make_task_action

CRD = Path(__file__).parent.parent / "engine" / "crd" / "flyte.org_taskactions.yaml"


@pytest.fixture(scope="module")
def schema():
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == "flyte.org" and crd["spec"]["names"]["kind"] == "TaskAction"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1" and version["subresources"] == {"status": {}}
    return version["schema"]["openAPIV3Schema"]


def _aliases(model) -> dict[str, object]:
    return {field.alias: field for field in model.model_fields.values()}


@pytest.mark.parametrize("model,section", [(TaskActionSpec, "spec"), (TaskActionStatus, "status")])
def test_every_field_exists_on_both_sides(schema, model, section):
    crd_fields = set(schema["properties"][section]["properties"])
    assert set(_aliases(model)) == crd_fields


_JSON_TYPES = {str: "string", int: "integer", bool: "boolean", bytes: "string", dt.datetime: "string"}


def _json_type(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # KubeBytes: bytes with its (standard base64) serializer
        return _json_type(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return "string"
    if origin in (typing.Union, types.UnionType):
        return _json_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
    if origin is list:
        return "array"
    if origin is dict:
        return "object"
    return _JSON_TYPES.get(annotation, "object")


def _base(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _base(next(a for a in typing.get_args(annotation) if a is not type(None)))
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


@pytest.mark.parametrize("model,section", [(TaskActionSpec, "spec"), (TaskActionStatus, "status")])
def test_field_types_agree(schema, model, section):
    props = schema["properties"][section]["properties"]
    for alias, field in _aliases(model).items():
        assert props[alias]["type"] == _json_type(field.annotation), alias
        base = _base(field.annotation)
        if base is bytes:
            assert props[alias].get("format") == "byte", alias
        if base is dt.datetime:
            assert props[alias].get("format") == "date-time", alias


def test_length_limits_agree(schema):
    props = schema["properties"]["spec"]["properties"]
    for alias, field in _aliases(TaskActionSpec).items():
        limits = {type(m).__name__: m for m in field.metadata}
        if "MaxLen" in limits:
            assert props[alias]["maxLength"] == limits["MaxLen"].max_length, alias
        if "MinLen" in limits:
            assert props[alias]["minLength"] == limits["MinLen"].min_length, alias


def test_serialized_object_is_camel_case_and_round_trips(schema):
    obj = make_task_action(finalizers=["flyte.org/plugin-finalizer"])
    obj.status.plugin_state = b"\x00\x01state"
    data = obj.to_dict()
    assert set(data) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert data["apiVersion"] == "flyte.org/v1" and data["kind"] == "TaskAction"
    assert "runName" in data["spec"] and "taskTemplate" in data["spec"]
    assert set(data["spec"]) <= set(schema["properties"]["spec"]["properties"])
    assert set(data["status"]) <= set(schema["properties"]["status"]["properties"])
    assert data["status"]["pluginState"] == "AAFzdGF0ZQ=="  # []byte is base64, as Kubernetes encodes it
    assert TaskAction.from_json(obj.to_json()) == obj


def test_bytes_are_standard_base64_as_the_crd_requires_and_old_url_safe_ones_still_load(schema):
    """pydantic's base64 is URL-safe; Kubernetes' ``format: byte`` (and Go's []byte) is the standard alphabet,
    so a template whose bytes encode to '-' or '_' was refused by the API server (found running a Dask task
    on the emulator, whose schema check caught it)."""
    import json
    import re

    pattern = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
    obj = make_task_action(template=bytes([0xfb, 0xff, 0xfe, 0x3e]))
    obj.status.plugin_state = bytes([0xff] * 7)
    data = obj.to_dict()
    assert data["spec"]["taskTemplate"] == "+//+Pg==" and pattern.match(data["status"]["pluginState"])
    assert json.loads(obj.to_json())["spec"]["taskTemplate"] == "+//+Pg=="
    stored_before = obj.to_json().replace("+//+Pg==", "-__-Pg==")  # what earlier versions wrote
    assert TaskAction.from_json(stored_before).spec.task_template == bytes([0xfb, 0xff, 0xfe, 0x3e])
    with pytest.raises(ValueError):
        TaskAction.from_json(obj.to_json().replace("+//+Pg==", "not base64!"))


def test_required_spec_fields_are_required(schema):
    required = set(schema["properties"]["spec"]["required"])
    model_required = {f.alias for f in TaskActionSpec.model_fields.values() if f.is_required()}
    assert required == model_required
