"""Tasks for the tasks-as-Pods scenarios (tests/test_task_pods.py)."""

import os
import pathlib
import signal
import time

import flyte

env = flyte.TaskEnvironment(name="pods")


@env.task
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@env.task
def killed() -> int:
    """Dies as the kernel's OOM killer kills a container (SIGKILL: exit 137)."""
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


vault = flyte.TaskEnvironment(name="vault", secrets=[flyte.Secret(key="pod-canary", as_env_var="API_KEY")])


@vault.task
def key_length() -> int:
    """Uses the secret without showing it: its length."""
    return len(os.environ["API_KEY"])


files_vault = flyte.TaskEnvironment(name="files_vault", secrets=[
    flyte.Secret(key="pod-file-canary", mount=pathlib.Path("/etc/flyte/secrets"))])


@files_vault.task
def file_key_length() -> int:
    """Reads the secret from the file Flyte mounts it as, without showing it: its length."""
    with open("/etc/flyte/secrets/pod-file-canary") as f:
        return len(f.read())
