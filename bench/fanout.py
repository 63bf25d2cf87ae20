"""End-to-end fan-outs of real `flyte` SDK tasks: TaskDeck against `flyte run --local`, interleaved.

A parent gathers N `square` children (examples/fanout.py sum_of_squares). Under TaskDeck every child is
enqueued over Connect, watched, reconciled, recorded as events and run as its own task process (forked by
the fork server, or a fresh `a0` with ``--paths exec``), or, with ``--paths reusable``
(examples/reusable_fanout.py, the same tree with the children in a ReusePolicy environment of 2 replicas
x 64), on reusable workers. The engine runs in this process and is warmed
by a first round; figures are medians of rounds 2..R. Each round runs TaskDeck then local mode, so both
see the same machine noise. Also printed: the engine's CPU per child, the task processes' CPU per child
on each path, the fork path's floor (a forked child's CPU), reconciles per child, the engine's RSS across
repeated runs, and a leaf `taskdeck run` through a running engine against `flyte run --local`. The code
reaches the actions as `taskdeck run` ships it, a code bundle each action fetches and works on in its own
directory (``--code bundle``, the default), or as a code directory they share (``--code dir``).

    python bench/fanout.py [--sizes 100 1000] [--rounds 5] [--paths fork reusable] [--code bundle dir]
                           [--rss-runs 20] [--leaf-rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.code_bundle import loaded_files, make_bundle  # noqa: E402
from engine.engine import Engine, EngineConfig  # noqa: E402
from engine.phases import ActionPhase  # noqa: E402
from engine.plugins.process import process_cpu_seconds  # noqa: E402
from engine.sdk import inputs_from_strings, load_task, serialize_task  # noqa: E402
from engine.uploads import UploadStore  # noqa: E402

EXAMPLES = ROOT / "examples"
# the same fan-out: children as task processes (forked, or fresh) or on reusable workers (ReusePolicy)
EXAMPLE = {"fork": "fanout.py", "exec": "fanout.py", "reusable": "reusable_fanout.py"}
BIN = Path(sys.executable).parent


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class TaskDeck:
    """An engine in this process, with a reconcile counter."""

    def __init__(self, data_dir: Path, path: str, max_processes: int | None, code: str = "bundle"):
        overrides = {"max_processes": max_processes} if max_processes else {}
        start = "exec" if path == "exec" else "fork"
        self.engine = Engine(EngineConfig(data_dir=data_dir, task_start=start, **overrides))
        self.reconciles: collections.Counter[str] = collections.Counter()
        task = load_task(EXAMPLES / EXAMPLE[path], "sum_of_squares")
        self.task = task
        self.code_dir: str | None = str(EXAMPLES)
        bundle = None
        if code == "bundle":  # as `taskdeck run` ships it: every action fetches it and works in its own directory
            data_dir.mkdir(parents=True, exist_ok=True)
            packed, digest = make_bundle(loaded_files(EXAMPLES, EXAMPLES / EXAMPLE[path]), EXAMPLES, data_dir.parent)
            bundle, self.code_dir = (UploadStore(data_dir).stage(str(packed), "bench", "dev"), digest), None
        self.spec = serialize_task(task, project="bench", domain="dev", root_dir=EXAMPLES, bundle=bundle)

    async def start(self) -> None:
        await self.engine.start()
        reconcile = self.engine.manager.reconcile

        async def counted(name):
            self.reconciles[name] += 1
            return await reconcile(name)

        self.engine.manager.reconcile = counted

    def forked_cpu(self) -> float:
        """CPU of task work not counted in RUSAGE_CHILDREN: forked actions (reaped by the fork servers),
        the fork servers' own (laying out files, forking) and actions on reusable workers (still running)."""
        zygotes = self.engine.container_plugin.zygotes
        forked = sum(z.cpu_seconds + (process_cpu_seconds(z.pid) or 0.0) for z in zygotes.running()) if zygotes else 0.0
        pooled = sum(w["cpuSeconds"] or 0.0 for p in self.engine.reusable_plugin.snapshot() for w in p["workers"])
        return forked + pooled

    def fork_floor_ms(self) -> float | None:
        zygotes = self.engine.container_plugin.zygotes
        usage = [u["cpuSeconds"] for z in (zygotes.running() if zygotes else []) for u in z.usage.values()]
        return statistics.median(usage) * 1000 if usage else None

    async def fan_out(self, n: int) -> dict:
        self.reconciles.clear()
        engine_cpu, task_cpu, forked = time.process_time(), children_cpu(), self.forked_cpu()
        started = time.perf_counter()
        run = await self.engine.runs.create_run(self.spec, inputs_from_strings(self.task, {"n": str(n)}),
                                                project="bench", domain="dev", code_dir=self.code_dir)
        result = await self.engine.runs.wait_for_run(run.run_name, timeout=3600)
        wall = time.perf_counter() - started
        assert result.phase == ActionPhase.SUCCEEDED, result.to_json()
        assert result.outputs == {"o0": sum(i * i for i in range(n))}
        children = [c for name, c in self.reconciles.items() if not name.endswith("-a0")]
        return {"wall": wall, "engine_cpu": time.process_time() - engine_cpu,
                "task_cpu": children_cpu() - task_cpu + self.forked_cpu() - forked,
                "reconciles": statistics.mean(children) if children else 0.0}


def filesystem_floor(directory: Path, n: int = 1000) -> float:
    """Milliseconds per child of the files every real child leaves, whoever writes them: its inputs (a
    directory and inputs.pb, by the parent's SDK), its outputs (a directory and outputs.pb) and its log (a
    directory and a file). Local mode keeps all of it in memory; here it is the floor under any design
    that keeps per-action outputs and logs on disk."""
    started = time.perf_counter()
    for i in range(n):
        for sub in (f"data/c{i}", f"data/c{i}/1", f"logs/c{i}"):
            os.makedirs(directory / sub)
        for name in (f"data/c{i}/inputs.pb", f"data/c{i}/1/outputs.pb", f"logs/c{i}/1.log"):
            with open(directory / name, "wb") as f:
                f.write(b"x" * 64)
    return (time.perf_counter() - started) / n * 1000


def local(n: int, example: str = "fanout.py") -> dict:
    cpu, started = children_cpu(), time.perf_counter()
    done = subprocess.run([str(BIN / "flyte"), "run", "--local", str(EXAMPLES / example), "sum_of_squares",
                           "--n", str(n)], cwd=EXAMPLES, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"flyte run --local failed:\n{done.stdout}\n{done.stderr}")
    return {"wall": wall, "cpu": children_cpu() - cpu}


async def fan_out_rounds(n: int, rounds: int, start: str, max_processes: int | None, code: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        deck = TaskDeck(Path(tmp) / "data", start, max_processes, code)
        await deck.start()
        ours, theirs = [], []
        try:
            for _ in range(rounds):
                ours.append(await deck.fan_out(n))
                theirs.append(await asyncio.to_thread(local, n, EXAMPLE[start]))
        finally:
            floor = deck.fork_floor_ms()
            await deck.engine.stop()
    ours, theirs = ours[1:] or ours, theirs[1:] or theirs  # round 1 warms the pools
    wall = statistics.median(r["wall"] for r in ours)
    local_wall = statistics.median(r["wall"] for r in theirs)
    tag = f"fanout_{n}_{start}" + ("_codedir" if code == "dir" else "")
    print(f"{tag}_wall_seconds: {wall:.2f}")
    print(f"{tag}_local_wall_seconds: {local_wall:.2f}")
    print(f"{tag}_ratio_to_local: {wall / local_wall:.2f}")
    print(f"{tag}_engine_cpu_ms_per_child: {statistics.median(r['engine_cpu'] for r in ours) / n * 1000:.1f}")
    print(f"{tag}_task_cpu_ms_per_child: {statistics.median(r['task_cpu'] for r in ours) / n * 1000:.1f}")
    print(f"{tag}_local_cpu_ms_per_child: {statistics.median(r['cpu'] for r in theirs) / n * 1000:.1f}")
    print(f"{tag}_reconciles_per_child: {statistics.median(r['reconciles'] for r in ours):.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"filesystem_floor_ms_per_child: {filesystem_floor(Path(tmp)):.2f}")
    if floor is not None and start == "fork":
        print(f"fork_floor_cpu_ms_per_child: {floor:.1f}")


async def rss_over_runs(n: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        deck = TaskDeck(Path(tmp) / "data", "fork", None)
        await deck.start()
        try:
            sizes = []
            for _ in range(runs):
                await deck.fan_out(n)
                sizes.append(rss_mib())
            store = deck.engine.store
            history_bytes, history_cap = store.history_bytes, store.history_bytes_cap
        finally:
            await deck.engine.stop()
    print(f"rss_mib_after_run_1_of_{runs}: {sizes[0]:.0f}")
    print(f"rss_mib_after_run_{runs}_of_{runs}: {sizes[-1]:.0f}")
    print(f"rss_mib_max_over_{runs}_runs: {max(sizes):.0f}")
    # the first runs fill bounded memory (the store's watch history, capped in bytes); a leak keeps growing
    half = runs // 2
    print(f"rss_mib_growth_runs_{half}_to_{runs}: {sizes[-1] - sizes[half - 1]:.0f}")
    print(f"rss_mib_by_run: {' '.join(f'{s:.0f}' for s in sizes)}")
    print(f"watch_history_mib_at_end: {history_bytes / 2**20:.1f} (cap {history_cap / 2**20:.0f})")


def leaf_rounds(rounds: int) -> None:
    """`taskdeck run` of one leaf task through a running headless engine, against `flyte run --local`."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        engine = subprocess.Popen([str(BIN / "taskdeck"), "--data-dir", str(data), "--allow-dir", str(ROOT),
                                   "--headless"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while not (data / "engine.json").exists() and time.time() < deadline:
                time.sleep(0.05)
            ours, theirs = [], []
            command = [str(EXAMPLES / "basics.py"), "add", "--x", "2", "--y", "40"]
            for _ in range(rounds + 1):
                started = time.perf_counter()
                subprocess.run([str(BIN / "taskdeck"), "--data-dir", str(data), "run", *command], check=True,
                               capture_output=True, cwd=EXAMPLES)
                ours.append(time.perf_counter() - started)
                started = time.perf_counter()
                subprocess.run([str(BIN / "flyte"), "run", "--local", *command], check=True, capture_output=True,
                               cwd=EXAMPLES)
                theirs.append(time.perf_counter() - started)
        finally:
            engine.terminate()
            engine.wait(30)
    wall, local_wall = statistics.median(ours[1:]), statistics.median(theirs[1:])
    print(f"leaf_taskdeck_run_wall_seconds: {wall:.2f}")
    print(f"leaf_local_wall_seconds: {local_wall:.2f}")
    print(f"leaf_ratio_to_local: {wall / local_wall:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--paths", nargs="+", default=["fork", "reusable"], choices=["fork", "exec", "reusable"])
    parser.add_argument("--max-processes", type=int, default=None, help="default: the engine's default")
    parser.add_argument("--rss-runs", type=int, default=20, help="fan(100) runs for the RSS figure (0: skip)")
    parser.add_argument("--leaf-rounds", type=int, default=5, help="0: skip the leaf comparison")
    parser.add_argument("--code", nargs="+", default=["bundle"], choices=["bundle", "dir"],
                        help="how the tasks' code reaches them: a code bundle (as `taskdeck run`), or a code directory")
    args = parser.parse_args()
    if shutil.which("flyte", path=str(BIN)) is None:
        sys.exit("flyte is not installed next to this Python")
    print(f"cores: {os.cpu_count()}")
    for start in args.paths:
        for n in args.sizes:
            for code in args.code:
                asyncio.run(fan_out_rounds(n, args.rounds, start, args.max_processes, code))
    if args.rss_runs:
        asyncio.run(rss_over_runs(100, args.rss_runs))
    if args.leaf_rounds:
        leaf_rounds(args.leaf_rounds)


if __name__ == "__main__":
    main()
