"""Distributed-engine task plugins: how long from submit until the task body runs, and how long the
teardown takes, beside the same task under `flyte run --local` in the same invocation (interleaved).

* Dask (examples/dask_sum.py, two workers): the local backend starts a scheduler and two workers, waits
  until both joined, then starts the task. Under local mode the task's Client() starts an in-process
  LocalCluster itself, inside the body.
* Ray (examples/ray_sum.py, head + a group of two): the local backend starts a Ray head node, then the
  task; under local mode ray.init() starts one inside the body.
* Spark (examples/spark_sum.py, two executors): both run Spark's local mode in the task's own process.

The teardown is the time from the body's end until no process of the cluster is left (the job runner's
exit included; TaskDeck reports the run done only after that). Medians of rounds 2..R (round 1 warms).

    python bench/plugins.py [--rounds 5] [--engines dask ray spark]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.engine import Engine, EngineConfig  # noqa: E402
from engine.phases import ActionPhase  # noqa: E402
from engine.sdk import inputs_from_strings, load_task, serialize_task  # noqa: E402

EXAMPLES = {"dask": ROOT / "examples" / "dask_sum.py", "ray": ROOT / "examples" / "ray_sum.py",
            "spark": ROOT / "examples" / "spark_sum.py"}
BIN = Path(sys.executable).parent


def cluster_processes(engine_name: str, marker: str) -> int:
    """Live processes of the engine's cluster: Dask's scheduler and workers (their scheduler file is in the
    data directory), Ray's node (its session directory is named taskdeck-ray-*), Spark's driver JVM."""
    needle = {"dask": b"distributed.cli", "ray": b"taskdeck-ray-", "spark": b"SparkSubmit"}[engine_name]
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if needle in cmdline and stat[stat.rfind(")") + 2] != "Z" and (
                    engine_name != "dask" or marker.encode() in cmdline):
                count += 1
    return count


async def taskdeck_round(engine: Engine, engine_name: str, task, spec, started_file: Path) -> dict:
    started_file.unlink(missing_ok=True)
    marker, seen, gone = str(engine.data_dir), [False], [0.0]
    example = EXAMPLES[engine_name]

    async def watch() -> None:  # when the cluster's last process went, at 20 ms resolution
        while True:
            count = cluster_processes(engine_name, marker)
            if count:
                seen[0] = True
            elif seen[0]:
                gone[0] = time.time()
                return
            await asyncio.sleep(0.02)

    watcher = asyncio.get_running_loop().create_task(watch())
    submitted = time.time()
    run = await engine.runs.create_run(spec, inputs_from_strings(task, {"n": "100", "started_file": str(started_file)}),
                                       project="bench", domain="dev", code_dir=str(example.parent))
    result = await engine.runs.wait_for_run(run.run_name, timeout=600)
    ended = time.time()
    assert result.phase == ActionPhase.SUCCEEDED, result.to_json()
    await asyncio.wait_for(watcher, 60)
    body_end = float(Path(str(started_file) + ".end").read_text())
    return {"to_body": float(started_file.read_text()) - submitted, "teardown": gone[0] - body_end,
            "total": ended - submitted}


def local_round(engine_name: str, started_file: Path, java_home: Path | None) -> dict:
    started_file.unlink(missing_ok=True)
    example = EXAMPLES[engine_name]
    env = dict(os.environ)
    if java_home is not None and java_home.exists() and "JAVA_HOME" not in env:
        env["JAVA_HOME"] = str(java_home)  # the same Java TaskDeck found (the spark extra's, through its shim)
    submitted = time.time()
    subprocess.run([str(BIN / "flyte"), "run", "--local", str(example), "total", "--n", "100", "--started_file",
                    str(started_file)], check=True, capture_output=True, cwd=example.parent, env=env)
    return {"to_body": float(started_file.read_text()) - submitted, "total": time.time() - submitted}


async def bench(engine_name: str, rounds: int) -> None:
    example = EXAMPLES[engine_name]
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(EngineConfig(data_dir=Path(tmp) / "data"))
        await engine.start()
        task = load_task(example, "total")
        spec = serialize_task(task, project="bench", domain="dev", root_dir=example.parent)
        ours, theirs = [], []
        try:
            for _ in range(rounds):
                ours.append(await taskdeck_round(engine, engine_name, task, spec, Path(tmp) / "started"))
                theirs.append(await asyncio.to_thread(local_round, engine_name, Path(tmp) / "started-local",
                                                      engine.data_dir / "work" / "java-shim"))
        finally:
            await engine.stop()
    ours, theirs = ours[1:] or ours, theirs[1:] or theirs
    tag = engine_name
    print(f"{tag}_submit_to_body_seconds: {statistics.median(r['to_body'] for r in ours):.2f}")
    print(f"{tag}_local_submit_to_body_seconds: {statistics.median(r['to_body'] for r in theirs):.2f}")
    print(f"{tag}_body_end_to_cluster_gone_seconds: {statistics.median(r['teardown'] for r in ours):.2f}")
    print(f"{tag}_total_seconds: {statistics.median(r['total'] for r in ours):.2f}")
    print(f"{tag}_local_total_seconds: {statistics.median(r['total'] for r in theirs):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engines", nargs="+", default=["dask", "ray", "spark"], choices=sorted(EXAMPLES))
    arguments = parser.parse_args()
    for name in arguments.engines:
        asyncio.run(bench(name, arguments.rounds))
