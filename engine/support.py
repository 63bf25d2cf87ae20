"""What a task asks for that this engine cannot give yet, refused when the run (or child action) is created,
with the feature named, rather than failing deep inside the SDK once the task runs.

Secrets: TaskDeck has no secret store yet. A secret the task asks for as an environment variable is given
from the engine's own environment when the engine passes that variable on (``--pass-env NAME``), the way
``flyte run --local`` takes it from the shell; otherwise the run is refused, saying how to provide it.
Secrets mounted as files (``/etc/flyte/secrets``) are refused: nothing may be written outside the data
directory.
"""

from __future__ import annotations

from collections.abc import Callable

from flyteidl2.core import security_pb2, tasks_pb2

from engine.errors import InvalidRunError


class UnsupportedFeatureError(InvalidRunError):
    pass


def check_supported(template: tasks_pb2.TaskTemplate, passed_env: Callable[[], frozenset[str]],
                    plugin_for: Callable[[str], str] | None = None) -> None:
    """Raise UnsupportedFeatureError naming what ``template`` needs that this engine lacks."""
    target = template.WhichOneof("target")
    if target == "sql":
        raise UnsupportedFeatureError(
            f"{template.id.name or 'the task'} is a SQL task (type {template.type!r}): TaskDeck runs no SQL "
            "engines; run the query from a Python task instead", field="taskTemplate")
    if target is None and plugin_for is not None and plugin_for(template.type) == "container":
        raise UnsupportedFeatureError(
            f"no plugin here runs task type {template.type!r}, and the task has no container to run as a process "
            "(install the plugin that handles it: a package with a taskdeck.plugins entry point)",
            field="taskTemplate")
    secrets = template.security_context.secrets
    if not secrets:
        return
    task = template.id.name or "the task"
    available = passed_env()
    for secret in secrets:
        name = f"{secret.group}/{secret.key}" if secret.group else secret.key
        if secret.mount_requirement == security_pb2.Secret.FILE or not secret.env_var:
            raise UnsupportedFeatureError(
                f"{task} asks for secret {name} mounted as a file: TaskDeck has no secret store yet and mounts "
                "no files; ask for it as an environment variable (flyte.Secret(..., as_env_var=...))",
                field="secrets")
        if secret.env_var not in available:
            raise UnsupportedFeatureError(
                f"{task} asks for secret {name} as ${secret.env_var}: TaskDeck has no secret store yet; start the "
                f"engine with {secret.env_var} set in its environment and --pass-env {secret.env_var}",
                field="secrets")
