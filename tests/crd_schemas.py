"""The operators' CRD schemas (tests/crds) as strict JSON Schema validators: an OpenAPI v3 structural schema
translated as in the reference notes (CEL rules are not evaluated), with unknown fields refused, as an API
server with fieldValidation=Strict refuses them."""

from __future__ import annotations

import copy
import functools
import gzip
from pathlib import Path

import yaml

CRDS = Path(__file__).parent / "crds"
FILES = {"DaskJob": "daskjob.yaml.gz", "SparkApplication": "sparkoperator.k8s.io_sparkapplications.yaml.gz",
         "RayJob": "ray.io_rayjobs.yaml.gz"}


def to_jsonschema(s, strict=False):
    if isinstance(s, list):
        return [to_jsonschema(x, strict) for x in s]
    if not isinstance(s, dict):
        return s
    s = {k: to_jsonschema(v, strict) if k in ("properties", "items", "additionalProperties", "allOf", "anyOf",
                                              "oneOf", "not") else v for k, v in s.items()}
    if "properties" in s:
        s["properties"] = {k: to_jsonschema(v, strict) for k, v in s["properties"].items()}
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if s.get("x-kubernetes-embedded-resource") and "properties" in s:
        for k in ("apiVersion", "kind"):
            s["properties"].setdefault(k, {"type": "string"})
        s["properties"].setdefault("metadata", {"type": "object"})
    preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
    if strict and "properties" in s and "additionalProperties" not in s and not preserve:
        s["additionalProperties"] = False
    for k in [k for k in s if k.startswith("x-kubernetes-")]:
        s.pop(k)
    return s


@functools.lru_cache(maxsize=None)
def validator(kind: str, strict: bool = True):
    import jsonschema

    crd = yaml.safe_load(gzip.decompress((CRDS / FILES[kind]).read_bytes()))
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    raw = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    raw["x-kubernetes-embedded-resource"] = True  # the root always allows apiVersion/kind/metadata
    raw.setdefault("properties", {})
    return jsonschema.Draft202012Validator(to_jsonschema(raw, strict))


def errors(kind_or_validator, obj) -> list[str]:
    v = validator(kind_or_validator) if isinstance(kind_or_validator, str) else kind_or_validator
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:110]}" for e in v.iter_errors(obj))
