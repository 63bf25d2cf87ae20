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
from engine.plugins.launcher import SECRET_MOUNT_FAILED_EXIT
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
    return parse_error_file(data)


def parse_error_file(data: bytes) -> execution_pb2.ContainerError:
    doc = execution_pb2.ErrorDocument()
    try:
        doc.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - any decode failure means an unreadable error file
        raise CorruptErrorFileError(str(exc)) from exc
    return doc.error


def read_outcome(tctx: TaskExecutionContext, exit_code: int | None, info: TaskInfo) -> PhaseInfo:
    """What an attempt's files say of how it ended: error.pb, then outputs.pb, then the exit code."""
    try:
        err = read_error_file(tctx.output_prefix)
    except CorruptErrorFileError as exc:
        return PhaseInfo.system_retryable_failure("CorruptedErrorFile", f"error.pb is unreadable: {exc}", info)
    outputs_file = Path(tctx.output_prefix) / "outputs.pb"
    if err is None and outputs_file.exists():
        try:
            data = outputs_file.read_bytes()
        except OSError as exc:
            raise StorageFaultError(str(outputs_file), exc) from exc
        return _decide(tctx, exit_code, info, err, data, lambda outputs: store_output_files(
            outputs_file, tctx.storage_root, outputs))
    return _decide(tctx, exit_code, info, err, None, None)


async def read_stored_outcome(tctx: TaskExecutionContext, exit_code: int | None, info: TaskInfo) -> PhaseInfo:
    """``read_outcome`` for an attempt whose prefix is on an object store (``tctx.files``): its outputs are
    there already, the task's SDK wrote every file they name to the raw-data prefix."""
    files = tctx.files
    prefix = tctx.output_prefix.rstrip("/")
    try:
        err = parse_error_file(await files.aread(f"{prefix}/error.pb"))
    except FileNotFoundError:
        err = None
    except CorruptErrorFileError as exc:
        return PhaseInfo.system_retryable_failure("CorruptedErrorFile", f"error.pb is unreadable: {exc}", info)
    except Exception as exc:  # noqa: BLE001 - the store failing: wait for it, do not decide
        raise StorageFaultError(f"{prefix}/error.pb", OSError(str(exc))) from exc
    data = None
    if err is None:
        try:
            data = await files.aread(f"{prefix}/outputs.pb")
        except FileNotFoundError:
            data = None
        except Exception as exc:  # noqa: BLE001
            raise StorageFaultError(f"{prefix}/outputs.pb", OSError(str(exc))) from exc
    return _decide(tctx, exit_code, info, err, data, None)


def _decide(tctx: TaskExecutionContext, exit_code: int | None, info: TaskInfo,
            err: execution_pb2.ContainerError | None, outputs_data: bytes | None, keep_files) -> PhaseInfo:
    info.custom["exitCode"] = exit_code
    if err is not None:
        kind = {execution_pb2.ExecutionError.USER: USER, execution_pb2.ExecutionError.SYSTEM: SYSTEM}.get(
            err.origin, UNKNOWN)
        error = ExecutionError(err.code or "Unknown", err.message or "Unknown error message", kind)
        if err.kind == execution_pb2.ContainerError.RECOVERABLE:
            return PhaseInfo.failed(PluginPhase.RETRYABLE_FAILURE, error, info)
        return PhaseInfo.failed(PluginPhase.PERMANENT_FAILURE, error, info)
    if outputs_data is not None:
        outputs = common_pb2.Outputs()
        try:  # a half-written file (full disk) must not become a success
            outputs.ParseFromString(outputs_data)
        except Exception as exc:  # noqa: BLE001
            return PhaseInfo.system_retryable_failure("CorruptedOutputs", f"outputs.pb is unreadable: {exc}",
                                                      info)
        declared = [v.key for v in tctx.task_template.interface.outputs.variables]
        missing = sorted(set(declared) - {literal.name for literal in outputs.literals})
        if missing:  # a 0-byte or truncated file parses, but lacks what the task declared
            return PhaseInfo.system_retryable_failure(
                "IncompleteOutputs", f"outputs.pb ({len(outputs_data)} bytes) lacks the declared "
                f"output(s) {', '.join(missing)}: a truncated or empty file (full disk?)", info)
        if keep_files is not None:
            try:
                keep_files(outputs)
            except OutputFileGone as exc:
                return PhaseInfo.failure("OutputFileGone", str(exc), info)
            except OSError as exc:
                raise StorageFaultError(tctx.output_prefix, exc) from exc
        return PhaseInfo.success(info)
    if exit_code == 0 and not tctx.task_template.interface.outputs.variables:
        return PhaseInfo.success(info)
    if exit_code is None:
        return PhaseInfo.system_retryable_failure(
            "ProcessLost", "the task process ended while the engine was not watching and left no outputs", info)
    if exit_code in (-signal.SIGKILL, 137, 247):
        return PhaseInfo.system_retryable_failure(
            "Interrupted", f"the task process was killed (exit {exit_code}); see {tctx.log_path}", info)
    if exit_code == SECRET_MOUNT_FAILED_EXIT:  # the launcher ran nothing: said in the log
        return PhaseInfo.system_retryable_failure(
            "SecretMountFailed", f"the secrets the task asks for as files could not be mounted at "
            f"/etc/flyte/secrets; see {tctx.log_path}", info)
    if exit_code == 0:
        return PhaseInfo.retryable_failure(
            "OutputsNotFound", f"the task exited 0 but wrote no outputs.pb in {tctx.output_prefix}", info)
    return PhaseInfo.retryable_failure(
        "NonZeroExit", f"the task process exited with code {exit_code} and no error file; see {tctx.log_path}",
        info)
