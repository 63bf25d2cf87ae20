"""Fan-outs of real `flyte` SDK children through the engine: a parent task gathers N `square` children.

Every child is its own `a0` process (the SDK's entrypoint), launched through the engine's Connect
services and reconciled like any TaskAction. Prints wall time, actions per second and peak memory.

    python bench/fanout.py [--sizes 100 1000] [--max-processes 16]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.engine import Engine, EngineConfig  # noqa: E402
from engine.phases import ActionPhase  # noqa: E402
from engine.sdk import inputs_from_strings, load_task, serialize_task  # noqa: E402

EXAMPLES = ROOT / "examples"


async def fan_out(n: int, max_processes: int) -> tuple[float, int]:
    task = load_task(EXAMPLES / "fanout.py", "sum_of_squares")
    spec = serialize_task(task, project="bench", domain="dev", root_dir=EXAMPLES)
    inputs = inputs_from_strings(task, {"n": str(n)})
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(EngineConfig(data_dir=Path(tmp), max_processes=max_processes))
        await engine.start()
        try:
            started = time.perf_counter()
            run = await engine.runs.create_run(spec, inputs, project="bench", domain="dev", code_dir=str(EXAMPLES))
            result = await engine.runs.wait_for_run(run.run_name, timeout=3600)
            elapsed = time.perf_counter() - started
            assert result.phase == ActionPhase.SUCCEEDED, result.to_json()
            assert result.outputs == {"o0": sum(i * i for i in range(n))}
            actions = await engine.runs.list_actions(run.run_name)
            assert len(actions) == n + 1
            return elapsed, len(actions)
        finally:
            await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--max-processes", type=int, default=16)
    args = parser.parse_args()
    for n in args.sizes:
        elapsed, actions = asyncio.run(fan_out(n, args.max_processes))
        print(f"fanout_{n}_wall_seconds: {elapsed:.1f}")
        print(f"fanout_{n}_actions_per_second: {actions / elapsed:.1f}")
    engine_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    task_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak_rss_engine_mib: {engine_mib:.0f}")
    print(f"peak_rss_largest_task_process_mib: {task_mib:.0f}")


if __name__ == "__main__":
    main()
