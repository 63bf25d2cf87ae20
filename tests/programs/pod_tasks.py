"""Tasks for the tasks-as-Pods scenarios (tests/test_task_pods.py)."""

import os
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
