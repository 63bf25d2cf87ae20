"""What a task asks for that this engine cannot give yet, refused when the run (or child action) is created,
with the feature named, rather than failing deep inside the SDK once the task runs.

Secrets: each one a task asks for as an environment variable must exist for its project and domain in the
secret store (``taskdeck secret create``), or be an engine variable passed on with ``--pass-env NAME``, the
way ``flyte run --local`` takes it from the shell; otherwise the run is refused, saying how to provide it.
Secrets mounted as files (``/etc/flyte/secrets``) are refused for task processes on this machine (nothing
may be written outside the data directory); tasks run as Pods on the Kubernetes backend get them as a
volume of the namespace's Secrets, as Flyte's secret webhook mounts them.
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


async def check_secrets(template: tasks_pb2.TaskTemplate, project: str, domain: str, store,
                        passed_env: Callable[[], frozenset[str]], mounts_files: bool = False) -> None:
    """Every secret the task asks for exists for its project and domain (in the secret store, or as an
    engine variable passed on with --pass-env) and is asked for as an environment variable."""
    from engine.secret_store import SecretNotFoundError, secret_env, secret_file_refs

    secrets = template.security_context.secrets
    if not secrets:
        return
    task = template.id.name or "the task"
    for secret in secrets:
        name = f"{secret.group}/{secret.key}" if secret.group else secret.key
        as_file = secret.mount_requirement == security_pb2.Secret.FILE or not secret.env_var
        if as_file and not (mounts_files and hasattr(store, "reference")):
            raise UnsupportedFeatureError(
                f"{task} asks for secret {name} mounted as a file: TaskDeck mounts no files outside its data "
                "directory; ask for it as an environment variable (flyte.Secret(..., as_env_var=...))",
                field="secrets")
    try:
        await secret_file_refs(store, template, project, domain)
    except SecretNotFoundError as exc:
        raise UnsupportedFeatureError(f"{task} asks for a secret mounted as a file that does not exist: {exc}; create "
                                      f"it with `taskdeck secret create NAME --project {project} --domain {domain}`",
                                      field="secrets") from None
    try:
        await secret_env(store, template, project, domain, passed_env())
    except SecretNotFoundError:
        missing = next(s for s in secrets if s.env_var not in passed_env())
        raise UnsupportedFeatureError(
            f"{task} asks for secret {missing.key!r} (as ${missing.env_var}), which does not exist for project "
            f"{project!r}, domain {domain!r}: create it with `taskdeck secret create {missing.key} --project "
            f"{project} --domain {domain}`, or start the engine with {missing.env_var} set and --pass-env "
            f"{missing.env_var}", field="secrets") from None
