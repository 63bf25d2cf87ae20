"""The TaskAction resource, shaped exactly like the ``flyte.org/v1`` CRD (camelCase JSON).

Byte fields (``taskTemplate``, ``pluginState``, ``conditionSpec``, ``signalValue``) are base64 in JSON, as
Kubernetes encodes ``[]byte``. Times are RFC 3339 UTC; we keep sub-second precision (the CRD's
``date-time`` format allows it) because the console shows durations.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator
from pydantic.alias_generators import to_camel

from engine.action_types import ACTION_TYPE_CONDITION, ACTION_TYPE_TASK, ACTION_TYPE_TRACE, ROOT_ACTION_NAME  # noqa: F401
from engine.names import DEFAULT_NAMESPACE
from engine.phases import ConditionType

API_VERSION = "flyte.org/v1"
KIND = "TaskAction"

FINALIZER = "flyte.org/plugin-finalizer"

LABEL_PROJECT = "flyte.org/project"
LABEL_DOMAIN = "flyte.org/domain"
LABEL_RUN = "flyte.org/run"
LABEL_ACTION = "flyte.org/action"
LABEL_ACTION_TYPE = "flyte.org/action-type"
LABEL_IS_ROOT = "flyte.org/is-root"
LABEL_TERMINATION_STATUS = "flyte.org/termination-status"
LABEL_COMPLETED_TIME = "flyte.org/completed-time"
TERMINATED = "terminated"
COMPLETED_TIME_FORMAT = "%Y-%m-%d.%H-%M"  # Go layout 2006-01-02.15-04: sorts lexicographically



_URL_SAFE_TO_STANDARD = str.maketrans("-_", "+/")


def _from_base64(value):
    """Standard base64 (what Kubernetes and Go write for ``[]byte``) or the URL-safe alphabet earlier versions
    of TaskDeck wrote (pydantic's default), so resources stored before still load."""
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value.translate(_URL_SAFE_TO_STANDARD) + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


# A ``[]byte`` field: standard base64 in JSON, as the CRD's ``format: byte`` requires (pydantic's own base64
# is URL-safe, which a real API server refuses with 422 whenever the bytes give '-' or '_').
KubeBytes = Annotated[bytes, BeforeValidator(_from_base64),
                      PlainSerializer(lambda value: base64.b64encode(value).decode(), return_type=str, when_used="json")]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _build(cls, fields: dict):
    """Instantiate an already-valid model from its field dict, skipping validation (hot path)."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", fields)
    object.__setattr__(obj, "__pydantic_fields_set__", set(fields))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


class CrdModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        ser_json_bytes="base64",
        val_json_bytes="base64",
        extra="forbid",
    )


class OwnerReference(CrdModel):
    api_version: str = API_VERSION
    kind: str = KIND
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(CrdModel):
    name: str
    namespace: str = DEFAULT_NAMESPACE
    uid: str = ""
    resource_version: str = ""
    generation: int = 0
    creation_timestamp: dt.datetime | None = None
    deletion_timestamp: dt.datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    owner_references: list[OwnerReference] = Field(default_factory=list)

    def copy_deep(self) -> ObjectMeta:
        return _build(ObjectMeta, {
            **self.__dict__,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "finalizers": list(self.finalizers),
            "owner_references": list(self.owner_references),
        })


class TaskActionSpec(CrdModel):
    run_name: str = Field(min_length=1, max_length=30)
    project: str = Field(min_length=1, max_length=63)
    domain: str = Field(min_length=1, max_length=63)
    action_name: str = Field(min_length=1, max_length=30)
    parent_action_name: str | None = Field(default=None, min_length=1, max_length=30)
    action_type: Literal["task", "condition"] | None = None  # omitted when unset (the CRD enum has no "")
    condition_spec: KubeBytes | None = None
    input_uri: str = ""
    run_output_base: str = ""
    cache_key: str = Field(default="", max_length=256)
    task_type: str = Field(default="", max_length=63)
    short_name: str = Field(default="", max_length=63)
    task_template: KubeBytes | None = None
    env_vars: dict[str, str] | None = None
    interruptible: bool | None = None
    group: str = Field(default="", max_length=256)

    @field_validator("action_type", mode="before")
    @classmethod
    def _unset_action_type(cls, value):
        return None if value == "" else value  # stored by earlier versions as ""


class Condition(CrdModel):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    observed_generation: int = 0
    last_transition_time: dt.datetime
    reason: str
    message: str = ""


class PhaseTransition(CrdModel):
    phase: str
    occurred_at: dt.datetime
    message: str | None = None

    @classmethod
    def of(cls, phase: str, occurred_at: dt.datetime, message: str | None) -> PhaseTransition:
        return _build(cls, {"phase": phase, "occurred_at": occurred_at, "message": message})


class ErrorState(CrdModel):
    code: str = ""
    kind: str = ""  # "USER", "SYSTEM" or ""
    message: str = ""


class TaskActionStatus(CrdModel):
    state_json: str = ""
    plugin_state: KubeBytes | None = None
    plugin_state_version: int = 0
    plugin_phase: str = ""
    plugin_phase_version: int = 0
    attempts: int = 0
    system_failures: int = 0
    cache_status: int = 0
    conditions: list[Condition] = Field(default_factory=list)
    phase_history: list[PhaseTransition] = Field(default_factory=list)
    error_state: ErrorState | None = None
    signal_value: KubeBytes | None = None
    signalled_by: str = ""
    signalled_at: dt.datetime | None = None

    def copy_deep(self) -> TaskActionStatus:
        return _build(TaskActionStatus, {
            **self.__dict__,
            "conditions": [_build(Condition, dict(c.__dict__)) for c in self.conditions],
            "phase_history": list(self.phase_history),
        })

    @property
    def observed_attempts(self) -> int:
        """0 means unset and reads as 1 (Flyte's observedAttempts)."""
        return self.attempts or 1

    def condition(self, type_: str) -> Condition | None:
        for cond in self.conditions:
            if cond.type == type_:
                return cond
        return None

    def set_condition(self, type_: str, status: bool, reason: str, message: str, now: dt.datetime) -> None:
        """meta.SetStatusCondition: lastTransitionTime moves only when the status flips."""
        value = "True" if status else "False"
        existing = self.condition(type_)
        if existing is None:
            self.conditions.append(_build(Condition, {
                "type": type_, "status": value, "observed_generation": 0, "last_transition_time": now,
                "reason": reason, "message": message,
            }))
            return
        if existing.status != value:
            existing.status = value
            existing.last_transition_time = now
        existing.reason = reason
        existing.message = message

    def is_true(self, type_: str) -> bool:
        cond = self.condition(type_)
        return cond is not None and cond.status == "True"

    @property
    def is_terminal(self) -> bool:
        return self.is_true(ConditionType.SUCCEEDED) or self.is_true(ConditionType.FAILED)


class TaskAction(CrdModel):
    api_version: str = API_VERSION
    kind: str = KIND
    metadata: ObjectMeta
    spec: TaskActionSpec
    status: TaskActionStatus = Field(default_factory=TaskActionStatus)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def resource_version(self) -> str:
        return self.metadata.resource_version

    @property
    def is_condition(self) -> bool:
        return self.spec.action_type == "condition"

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def from_json(cls, data: str | bytes) -> TaskAction:
        return cls.model_validate_json(data)

    def copy_deep(self) -> TaskAction:
        """An independent copy, built field by field (generic deepcopy dominated the engine's profile).

        Values that are only ever replaced, never mutated in place (owner references, phase transitions,
        errorState, bytes), are shared; containers and conditions, which are mutated, are copied.
        """
        return _build(TaskAction, {
            "api_version": self.api_version,
            "kind": self.kind,
            "metadata": self.metadata.copy_deep(),
            "spec": _build(TaskActionSpec, {**self.spec.__dict__, "env_vars": dict(self.spec.env_vars)
                                            if self.spec.env_vars is not None else None}),
            "status": self.status.copy_deep(),
        })


def task_action_name(run_name: str, action_name: str) -> str:
    """``<run>-a0`` for roots, ``<run>-<action>`` for children (buildTaskActionName)."""
    if action_name == run_name:
        return f"{run_name}-{ROOT_ACTION_NAME}"
    return f"{run_name}-{action_name}"


def base_labels(project: str, domain: str, run: str, action: str, action_type: str, is_root: bool) -> dict[str, str]:
    return {
        LABEL_PROJECT: project,
        LABEL_DOMAIN: domain,
        LABEL_RUN: run,
        LABEL_ACTION: action,
        LABEL_ACTION_TYPE: action_type or "task",
        LABEL_IS_ROOT: "true" if is_root else "false",
    }


def owner_reference_to(parent: TaskAction) -> OwnerReference:
    """Child → parent: no controller flag, blockOwnerDeletion=true (setParentOwnership)."""
    return OwnerReference(name=parent.metadata.name, uid=parent.metadata.uid, block_owner_deletion=True)
