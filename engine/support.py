"""What a task asks for that this engine cannot give yet, refused when the run (or child action) is created,
with the feature named, rather than failing deep inside the SDK once the task runs.

Secrets: each one a task asks for as an environment variable must exist for its project and domain in the
secret store (``taskdeck secret create``), or be an engine variable passed on with ``--pass-env NAME``, the
way ``flyte run --local`` takes it from the shell; otherwise the run is refused, saying how to provide it.
Secrets asked for as files (``/etc/flyte/secrets``) need a plugin that mounts them: a local task process
gets them in a mount namespace of its own (``plugins/secret_mounts.py``, where the machine allows one),
tasks run as Pods on the Kubernetes backend as a volume of the namespace's Secrets, as Flyte's secret
webhook mounts them; anything else is refused, saying why.
"""

from __future__ import annotations

from collections.abc import Callable

from flyteidl2.core import tasks_pb2

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
                        passed_env: Callable[[], frozenset[str]],
                        no_file_mounts: str | None = "this engine mounts no secret files") -> None:
    """Every secret the task asks for exists for its project and domain (in the secret store, or, asked for
    as an environment variable, as an engine variable passed on with --pass-env); one asked for as a file
    needs a plugin that can mount it (``no_file_mounts``: why the task's cannot, or None)."""
    from engine.secret_store import SecretNotFoundError, is_file_request, secret_env, secret_file_path

    secrets = template.security_context.secrets
    if not secrets:
        return
    task = template.id.name or "the task"
    for secret in secrets:
        name = f"{secret.group}/{secret.key}" if secret.group else secret.key
        if is_file_request(secret) and any(part in ("", ".", "..") for part in secret_file_path(secret).split("/")):
            raise UnsupportedFeatureError(f"{task} asks for secret {name} as a file, but {name!r} is not a path of "
                                          "plain names under /etc/flyte/secrets", field="secrets")
        if is_file_request(secret) and no_file_mounts is not None:
            raise UnsupportedFeatureError(
                f"{task} asks for secret {name} mounted as a file, which cannot be done here: {no_file_mounts}; "
                "ask for it as an environment variable (flyte.Secret(..., as_env_var=...))", field="secrets")
    for secret in secrets:
        if not is_file_request(secret):
            continue
        try:
            await store.resolve(secret.key, project=project, domain=domain)
        except SecretNotFoundError as exc:
            raise UnsupportedFeatureError(
                f"{task} asks for secret {secret.key!r} mounted as a file, which does not exist ({exc}): create it "
                f"with `taskdeck secret create {secret.key} --project {project} --domain {domain}`",
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
