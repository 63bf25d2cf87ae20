"""Throughput of the engine's core: N no-op actions through the whole lifecycle, every event persisted.

What it measures: the store, the reconciler, the phase table and the actions table, with children
created in-process by the runs service and run by the `core-sleep` plugin (no task process, no Connect
enqueue, no SDK watch), one ActionEvent each. It is the engine's ceiling, not what a real fan-out gets:
for that, end to end with real `flyte` tasks, see bench/fanout.py.

Round A (the headline figure, ``actions_per_second``): one run whose root action stays running and N
``core-sleep`` (duration 0) child actions under it, as a fan-out creates them. Each child is created
(action row + TaskAction, one transaction), reconciled (finalizer, plugin handle, conditions, phaseHistory,
ActionEvent recorded before the status, terminal labels) and counted when its actions-table row is
SUCCEEDED. The children share one inputs.pb, so no per-action file is created.

Round B (``runs_per_second``): N separate runs, each writing its own inputs.pb. Creating a directory and a
file costs ~0.2 ms each on this machine's ext4 (vs ~4 us on tmpfs), so this figure includes that cost.

    python bench/throughput.py [--actions 5000] [--runs 1000] [--repeat 3] [--workers 64]
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

from engine.engine import Engine, EngineConfig  # noqa: E402
from engine.phases import ActionPhase  # noqa: E402
from engine.store.base import ActionsChanged  # noqa: E402
from helpers import sleep_inputs, sleep_spec  # noqa: E402

BATCH = 50


class SucceededCounter:
    """Counts SUCCEEDED from the store's change notifications (no polling queries during the round)."""

    def __init__(self, engine: Engine):
        self.keys: set[tuple] = set()
        self.enough = asyncio.Event()
        self.target = 0
        self.unsubscribe = engine.store.subscribe(self._on_change)

    def _on_change(self, change) -> None:
        if isinstance(change, ActionsChanged):
            for update in change.updates:
                if update.phase == ActionPhase.SUCCEEDED:
                    self.keys.add(update.key)
            if self.target and len(self.keys) >= self.target:
                self.enough.set()

    async def wait(self, engine: Engine, run: tuple[str, str, str] | None, count: int) -> None:
        self.target = count
        if len(self.keys) < count:
            await self.enough.wait()
        self.unsubscribe()
        counts = await engine.store.phase_counts(run)  # the table agrees
        assert counts.get(int(ActionPhase.SUCCEEDED), 0) == count, counts


async def fan_out_round(n: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(EngineConfig(data_dir=Path(tmp), serve=False, workers=workers))
        await engine.start()
        try:
            spec = sleep_spec()
            root = await engine.runs.create_run(spec, sleep_inputs(3600), project="bench", domain="dev")
            counter = SucceededCounter(engine)
            inputs_uri = f"{root.run_output_base}/shared/inputs.pb"
            Path(inputs_uri).parent.mkdir(parents=True)
            Path(inputs_uri).write_bytes(sleep_inputs(0).SerializeToString())
            started = time.perf_counter()
            for i in range(0, n, BATCH):
                await asyncio.gather(*(engine.runs.create_action(root.run_name, f"n{j}", "a0", spec, inputs_uri)
                                       for j in range(i, min(i + BATCH, n))))
            await counter.wait(engine, (root.project, root.domain, root.run_name), n)
            elapsed = time.perf_counter() - started
            for j in range(0, n, max(1, n // 100)):  # every sampled child has its SUCCEEDED event
                key = (root.project, root.domain, root.run_name, f"n{j}")
                phases = [ActionPhase(e.phase) for e in await engine.store.list_events(key)]
                assert phases[-1] == ActionPhase.SUCCEEDED, (key, phases)
            await engine.runs.abort_action(root.run_name)
            return n / elapsed
        finally:
            await engine.stop()


async def runs_round(n: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(EngineConfig(data_dir=Path(tmp), serve=False, workers=workers))
        await engine.start()
        try:
            spec, inputs = sleep_spec(), sleep_inputs(0)
            counter = SucceededCounter(engine)
            started = time.perf_counter()
            for i in range(0, n, BATCH):
                await asyncio.gather(*(engine.runs.create_run(spec, inputs, project="bench", domain="dev")
                                       for _ in range(min(BATCH, n - i))))
            await counter.wait(engine, None, n)
            return n / (time.perf_counter() - started)
        finally:
            await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--actions", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()
    action_rates, run_rates = [], []
    for i in range(args.repeat):
        action_rates.append(asyncio.run(fan_out_round(args.actions, args.workers)))
        run_rates.append(asyncio.run(runs_round(args.runs, args.workers)))
        print(f"round {i + 1}: {action_rates[-1]:,.0f} actions/s ({args.actions} children of one run), "
              f"{run_rates[-1]:,.0f} runs/s ({args.runs} runs)", flush=True)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"actions_per_second: {statistics.median(action_rates):.0f}")
    print(f"runs_per_second: {statistics.median(run_rates):.0f}")
    print(f"peak_rss_mib: {peak_mib:.0f}")


if __name__ == "__main__":
    main()
