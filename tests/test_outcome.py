"""How an attempt's files say it ended (``outcome.read_outcome``), shared by every plugin that runs processes."""

from __future__ import annotations

from flyteidl2.core import execution_pb2

from engine.phases import PluginPhase
from engine.plugins.core import TaskInfo
from engine.plugins.outcome import read_outcome
from test_dask import _tctx


def _write_error(tmp_path, kind) -> None:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    doc = execution_pb2.ErrorDocument(error=execution_pb2.ContainerError(
        code="ValueError", message="boom", kind=kind, origin=execution_pb2.ExecutionError.USER))
    (out / "error.pb").write_bytes(doc.SerializeToString())


def test_an_error_file_decides_retryable_or_permanent(tmp_path):
    _write_error(tmp_path, execution_pb2.ContainerError.RECOVERABLE)
    info = read_outcome(_tctx(tmp_path, None), 0, TaskInfo())
    assert info.phase == PluginPhase.RETRYABLE_FAILURE and (info.err.code, info.err.kind) == ("ValueError", "USER")
    _write_error(tmp_path, execution_pb2.ContainerError.NON_RECOVERABLE)
    assert read_outcome(_tctx(tmp_path, None), 0, TaskInfo()).phase == PluginPhase.PERMANENT_FAILURE


def test_an_unreadable_error_file_is_a_system_failure_and_no_file_reads_the_exit_code(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "error.pb").write_bytes(b"\xff\xff not a protobuf")
    info = read_outcome(_tctx(tmp_path, None), 0, TaskInfo())
    assert info.phase == PluginPhase.RETRYABLE_FAILURE and info.err.code == "CorruptedErrorFile"
    assert info.err.kind == "SYSTEM"
    (tmp_path / "out" / "error.pb").unlink()
    info = read_outcome(_tctx(tmp_path, None), 3, TaskInfo())
    assert info.err.code == "NonZeroExit" and info.info.custom["exitCode"] == 3
