"""Cache-hit throughput: N discoverable no-op actions whose key is already in the cache.

One run keeps its root running; a first discoverable ``core-sleep`` child (duration 0) runs and
populates the cache; then N children with the same task and inputs are created, and each is counted
when its actions-table row is SUCCEEDED. Every one must be a CACHE_HIT: looked up, short-circuited
without the plugin, its events and status written.

    python bench/cache.py [--actions 3000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from engine.cache import CACHE_HIT, CACHE_POPULATED  # noqa: E402
from engine.engine import Engine, EngineConfig  # noqa: E402
from helpers import sleep_inputs, sleep_spec  # noqa: E402
from throughput import BATCH, SucceededCounter  # noqa: E402


def cached_sleep_spec():
    spec = sleep_spec()
    spec.task_template.metadata.discoverable = True
    spec.task_template.metadata.discovery_version = "bench-1"
    return spec


async def hit_round(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(EngineConfig(data_dir=Path(tmp), serve=False, gc_interval_seconds=0))
        await engine.start()
        try:
            root = await engine.runs.create_run(sleep_spec(), sleep_inputs(3600), project="bench", domain="dev")
            inputs_uri = f"{root.run_output_base}/shared/inputs.pb"
            Path(inputs_uri).parent.mkdir(parents=True)
            Path(inputs_uri).write_bytes(sleep_inputs(0).SerializeToString())
            spec = cached_sleep_spec()
            run_key = (root.project, root.domain, root.run_name)

            counter = SucceededCounter(engine)
            await engine.runs.create_action(root.run_name, "seed", "a0", spec, inputs_uri)
            await counter.wait(engine, run_key, 1)
            seed = await engine.store.get_action((*run_key, "seed"))
            assert seed.cache_status == CACHE_POPULATED, seed

            counter = SucceededCounter(engine)
            started = time.perf_counter()
            for i in range(0, n, BATCH):
                await asyncio.gather(*(engine.runs.create_action(root.run_name, f"n{j}", "a0", spec, inputs_uri)
                                       for j in range(i, min(i + BATCH, n))))
            counter.target = n  # counts only these n: it subscribed after the seed succeeded
            if len(counter.keys) < n:
                await counter.enough.wait()
            elapsed = time.perf_counter() - started
            counter.unsubscribe()
            rows = await engine.runs.list_actions(root.run_name)
            hits = sum(1 for r in rows if r.cache_status == CACHE_HIT)
            assert hits == n, f"{hits} of {n} were cache hits"
            await engine.runs.abort_action(root.run_name)
            return n / elapsed
        finally:
            await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--actions", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates = []
    for i in range(args.repeat):
        rates.append(asyncio.run(hit_round(args.actions)))
        print(f"round {i + 1}: {rates[-1]:,.0f} cache-hit actions/s ({args.actions} actions)", flush=True)
    print(f"cache_hit_actions_per_second: {statistics.median(rates):.0f}")
    print(f"peak_rss_mib: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
