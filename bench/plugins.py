"""Distributed-engine task plugins: how long from submit until the task body runs, and how long the
teardown takes, beside the same task under `flyte run --local` in the same invocation (interleaved).

Dask (examples/dask_sum.py, two workers): under TaskDeck the local backend starts a scheduler and two
worker processes, waits until both joined, then starts the task; the teardown is the time from the run's
body's end until no process of its cluster is left (the job runner's exit included; the run is reported
done only after that). Under local mode the task's Client() starts an in-process
LocalCluster itself, so its start-up is inside the body. Medians of rounds 2..R (round 1 warms caches).

    python bench/plugins.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
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

EXAMPLE = ROOT / "examples" / "dask_sum.py"
BIN = Path(sys.executable).parent


def cluster_processes(marker: str) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"distributed.cli" in cmdline and marker.encode() in cmdline:
                count += 1
    return count


async def taskdeck_round(engine: Engine, task, spec, started_file: Path) -> dict:
    started_file.unlink(missing_ok=True)
    marker, seen, gone = str(engine.data_dir), [False], [0.0]

    async def watch() -> None:  # when the cluster's last process went, at 20 ms resolution
        while True:
            count = cluster_processes(marker)
            if count:
                seen[0] = True
            elif seen[0]:
                gone[0] = time.time()
                return
            await asyncio.sleep(0.02)

    watcher = asyncio.get_running_loop().create_task(watch())
    submitted = time.time()
    run = await engine.runs.create_run(spec, inputs_from_strings(task, {"n": "100", "started_file": str(started_file)}),
                                       project="bench", domain="dev", code_dir=str(EXAMPLE.parent))
    result = await engine.runs.wait_for_run(run.run_name, timeout=600)
    ended = time.time()
    assert result.phase == ActionPhase.SUCCEEDED, result.to_json()
    await asyncio.wait_for(watcher, 60)
    body_end = float(Path(str(started_file) + ".end").read_text())
    return {"to_body": float(started_file.read_text()) - submitted, "teardown": gone[0] - body_end,
            "total": ended - submitted}


def local_round(started_file: Path) -> dict:
    started_file.unlink(missing_ok=True)
    submitted = time.time()
    subprocess.run([str(BIN / "flyte"), "run", "--local", str(EXAMPLE), "total", "--n", "100", "--started_file",
                    str(started_file)], check=True, capture_output=True, cwd=EXAMPLE.parent)
    return {"to_body": float(started_file.read_text()) - submitted, "total": time.time() - submitted}


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(EngineConfig(data_dir=Path(tmp) / "data"))
        await engine.start()
        task = load_task(EXAMPLE, "total")
        spec = serialize_task(task, project="bench", domain="dev", root_dir=EXAMPLE.parent)
        ours, theirs = [], []
        try:
            for _ in range(rounds):
                ours.append(await taskdeck_round(engine, task, spec, Path(tmp) / "started"))
                theirs.append(await asyncio.to_thread(local_round, Path(tmp) / "started-local"))
        finally:
            await engine.stop()
    ours, theirs = ours[1:] or ours, theirs[1:] or theirs
    print(f"dask_submit_to_body_seconds: {statistics.median(r['to_body'] for r in ours):.2f}")
    print(f"dask_local_submit_to_body_seconds: {statistics.median(r['to_body'] for r in theirs):.2f}")
    print(f"dask_body_end_to_cluster_gone_seconds: {statistics.median(r['teardown'] for r in ours):.2f}")
    print(f"dask_total_seconds: {statistics.median(r['total'] for r in ours):.2f}")
    print(f"dask_local_total_seconds: {statistics.median(r['total'] for r in theirs):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))
