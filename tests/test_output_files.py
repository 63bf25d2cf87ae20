"""Files a task returns are kept in the data directory, as a cluster keeps them in blob storage: a
``File.from_local`` / ``Dir.from_local`` output (also inside a dataclass) is copied beside the attempt's
outputs and the literal names the copy; downstream tasks read it from there; a file that was already gone
when the task ended fails the task saying why."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgpack
import pytest
from flyteidl2.core import literals_pb2
from flyteidl2.task import common_pb2

from engine.phases import ActionPhase
from engine.plugins.output_files import OutputFileGone, store_output_files
from helpers import run_sdk_task

pytestmark = pytest.mark.sdk
PROGRAMS = Path(__file__).parent / "programs"


@pytest.fixture
def tasks(tmp_path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    return Path(shutil.copy(PROGRAMS / "file_tasks.py", code / "file_tasks.py"))


def _outputs(engine, run: str, action: str = "a0") -> common_pb2.Outputs:
    outputs = common_pb2.Outputs()
    outputs.ParseFromString(next((engine.data_dir / "data").glob(f"*/*/{run}/{action}/1/outputs.pb")).read_bytes())
    return outputs


async def test_a_returned_file_is_stored_in_the_data_directory(engine, tasks):
    result = await run_sdk_task(engine, tasks, "make", text="kept")
    assert result.phase == ActionPhase.SUCCEEDED, result.error
    uri = _outputs(engine, result.run.run_name).literals[0].value.scalar.blob.uri
    assert uri.startswith(str(engine.data_dir)) and Path(uri).read_text() == "kept"


async def test_a_file_inside_a_dataclass_is_stored_too(engine, tasks):
    result = await run_sdk_task(engine, tasks, "make_bundle", text="inner")
    assert result.phase == ActionPhase.SUCCEEDED, result.error
    binary = _outputs(engine, result.run.run_name).literals[0].value.scalar.binary
    path = msgpack.unpackb(binary.value, strict_map_key=False)["data"]["path"]
    assert path.startswith(str(engine.data_dir)) and Path(path).read_text() == "inner"


async def test_downstream_tasks_read_the_stored_files(engine, tasks):
    result = await run_sdk_task(engine, tasks, "pipeline", timeout=180, text="hi")
    assert result.phase == ActionPhase.SUCCEEDED, result.error
    assert result.outputs == {"o0": "hi 3 hi!"}


async def test_a_file_gone_before_the_task_ended_fails_it_saying_why(engine, tasks):
    result = await run_sdk_task(engine, tasks, "vanishing", text="x")
    assert result.phase == ActionPhase.FAILED
    assert result.error["code"] == "OutputFileGone" and "TemporaryDirectory" in result.error["message"]


def test_paths_in_collections_maps_and_unions_are_stored_and_stored_ones_kept(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.csv").write_text("a")
    store = tmp_path / "data"
    attempt = store / "run" / "a0" / "1"
    attempt.mkdir(parents=True)
    (attempt / "already.txt").write_text("mine")

    def blob(path):
        return literals_pb2.Literal(scalar=literals_pb2.Scalar(blob=literals_pb2.Blob(uri=str(path))))

    outputs = common_pb2.Outputs()
    outputs.literals.add(name="o0", value=literals_pb2.Literal(collection=literals_pb2.LiteralCollection(
        literals=[blob(outside / "a.csv"), blob(attempt / "already.txt"), blob("s3://bucket/x")])))
    outputs.literals.add(name="o1", value=literals_pb2.Literal(map=literals_pb2.LiteralMap(
        literals={"k": literals_pb2.Literal(scalar=literals_pb2.Scalar(union=literals_pb2.Union(
            value=blob(outside))))})))
    file = attempt / "outputs.pb"
    file.write_bytes(outputs.SerializeToString())
    assert store_output_files(file, str(store))
    stored = common_pb2.Outputs()
    stored.ParseFromString(file.read_bytes())
    uris = [item.scalar.blob.uri for item in stored.literals[0].value.collection.literals]
    assert uris[0].startswith(str(attempt)) and Path(uris[0]).read_text() == "a"
    assert uris[1:] == [str(attempt / "already.txt"), "s3://bucket/x"]  # kept as they were
    copied_dir = stored.literals[1].value.map.literals["k"].scalar.union.value.scalar.blob.uri
    assert Path(copied_dir, "a.csv").read_text() == "a"
    assert not store_output_files(file, str(store))  # a second pass changes nothing

    gone = common_pb2.Outputs()
    gone.literals.add(name="o0", value=blob(outside / "missing.txt"))
    file.write_bytes(gone.SerializeToString())
    with pytest.raises(OutputFileGone, match="o0 names .*missing.txt"):
        store_output_files(file, str(store))
