"""How a task attempt ended, read from what it left beside its outputs (shared by the process plugins).

The exit code alone is not trusted: the SDK exits 0 after catching a user error, and a reusable worker
reports 0 for an action whose error.pb says it failed.
"""

from __future__ import annotations

import signal
from pathlib import Path

from flyteidl2.core import execution_pb2
from flyteidl2.task import common_pb2

from engine.phases import PluginPhase
from engine.plugins.core import (
    SYSTEM,
    UNKNOWN,
    USER,
    ExecutionError,
    PhaseInfo,
    StorageFaultError,
    TaskExecutionContext,
    TaskInfo,
)
from engine.plugins.output_files import OutputFileGone, store_output_files


class CorruptErrorFileError(Exception):
    pass


def read_error_file(output_prefix: str) -> execution_pb2.ContainerError | None:
    """The attempt's error.pb, or None when it wrote none; CorruptErrorFileError when it is unreadable."""
    try:
        data = (Path(output_prefix) / "error.pb").read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptErrorFileError(str(exc)) from exc
    doc = execution_pb2.ErrorDocument()
    try:
        doc.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - any decode failure means an unreadable error file
        raise CorruptErrorFileError(str(exc)) from exc
    return doc.error


def read_outcome(tctx: TaskExecutionContext, exit_code: int | None, info: TaskInfo) -> PhaseInfo:
    """What an attempt's files say of how it ended: error.pb, then outputs.pb, then the exit code."""
    out = Path(tctx.output_prefix)
    info.custom["exitCode"] = exit_code
    try:
        err = read_error_file(tctx.output_prefix)
    except CorruptErrorFileError as exc:
        return PhaseInfo.system_retryable_failure("CorruptedErrorFile", f"error.pb is unreadable: {exc}", info)
    if err is not None:
        kind = {execution_pb2.ExecutionError.USER: USER, execution_pb2.ExecutionError.SYSTEM: SYSTEM}.get(
            err.origin, UNKNOWN)
        error = ExecutionError(err.code or "Unknown", err.message or "Unknown error message", kind)
        if err.kind == execution_pb2.ContainerError.RECOVERABLE:
            return PhaseInfo.failed(PluginPhase.RETRYABLE_FAILURE, error, info)
        return PhaseInfo.failed(PluginPhase.PERMANENT_FAILURE, error, info)
    outputs_file = out / "outputs.pb"
    if outputs_file.exists():
        outputs = common_pb2.Outputs()
        try:  # a half-written file (full disk) must not become a success
            outputs.ParseFromString(outputs_file.read_bytes())
        except Exception as exc:  # noqa: BLE001
            return PhaseInfo.system_retryable_failure("CorruptedOutputs", f"outputs.pb is unreadable: {exc}",
                                                      info)
        declared = [v.key for v in tctx.task_template.interface.outputs.variables]
        missing = sorted(set(declared) - {literal.name for literal in outputs.literals})
        if missing:  # a 0-byte or truncated file parses, but lacks what the task declared
            return PhaseInfo.system_retryable_failure(
                "IncompleteOutputs", f"outputs.pb ({outputs_file.stat().st_size} bytes) lacks the declared "
                f"output(s) {', '.join(missing)}: a truncated or empty file (full disk?)", info)
        try:
            store_output_files(outputs_file, tctx.storage_root, outputs)
        except OutputFileGone as exc:
            return PhaseInfo.failure("OutputFileGone", str(exc), info)
        except OSError as exc:
            raise StorageFaultError(str(outputs_file.parent), exc) from exc
        return PhaseInfo.success(info)
    if exit_code == 0 and not tctx.task_template.interface.outputs.variables:
        return PhaseInfo.success(info)
    if exit_code is None:
        return PhaseInfo.system_retryable_failure(
            "ProcessLost", "the task process ended while the engine was not watching and left no outputs", info)
    if exit_code in (-signal.SIGKILL, 137, 247):
        return PhaseInfo.system_retryable_failure(
            "Interrupted", f"the task process was killed (exit {exit_code}); see {tctx.log_path}", info)
    if exit_code == 0:
        return PhaseInfo.retryable_failure(
            "OutputsNotFound", f"the task exited 0 but wrote no outputs.pb in {tctx.output_prefix}", info)
    return PhaseInfo.retryable_failure(
        "NonZeroExit", f"the task process exited with code {exit_code} and no error file; see {tctx.log_path}",
        info)
