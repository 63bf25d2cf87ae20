"""kill -9 the engine at random moments (repeatedly), restart it, and check the invariants.

Each trial: a headless engine (a subprocess) takes 10 core-sleep runs and a real `flyte` parent whose
children fan out, one of them failing its first attempt (retries=1). The engine is SIGKILLed after a
random delay, restarted on the same data directory, killed again, and so on (``--kills``); the last
engine runs everything to the end. Then:
  * the database passes PRAGMA integrity_check;
  * every run SUCCEEDED and the parent's output is right (sum of squares + 3);
  * every event an engine acknowledged (printed after its commit) is in the database (``lost_events``);
  * no (action, attempt, phase, version) is recorded twice, no attempt has two terminal events;
  * no task body started twice for one attempt (``double_starts``): each body appends its attempt's
    output path to a ledger, so a repeated line is a double start.

Every second trial runs the parent's children on reusable workers (flyte.ReusePolicy): workers outlive a
killed engine, finish their actions and exit; the next engine adopts those actions.

``--die-after-spawn`` kills the engine inside its first launch, after the task process exists and
before its launch is recorded (the window in which a naive engine loses track of a running task).

    python bench/kill9.py [--trials 20] [--kills 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from engine.phases import ActionPhase  # noqa: E402
from engine.runs import RunsService  # noqa: E402
from engine.store.sqlite import SqliteStore  # noqa: E402
from helpers import sleep_inputs, sleep_spec  # noqa: E402

EVENT_LINE = re.compile(r"^\S+ (?P<run>\w+)/(?P<action>\w+) attempt (?P<attempt>\d+) (?P<phase>[A-Z_]+)")
TERMINAL = {"SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT", "RECOVERED"}
PARENT_N = 3
PARENT_OUTPUT = sum(i * i for i in range(PARENT_N)) + 3


class HeadlessEngine:
    def __init__(self, data_dir: Path, die_after_spawn: bool = False, engine_args: tuple[str, ...] = ()):
        self.data_dir = data_dir
        self.lines: list[str] = []
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(data_dir)]
        if die_after_spawn:
            command.append("--die-after-spawn")
        command += [f"--engine-arg={arg}" for arg in engine_args]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.time() + 60
        while not self.url:
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError("the engine did not start:\n" + "\n".join(self.lines))
            time.sleep(0.02)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def url(self) -> str | None:
        for line in self.lines:
            if " at http://" in line:
                return line.split(" at ", 1)[1].split(" ", 1)[0]
        return None

    def call(self, method: str, path: str, payload=None):
        data = json.dumps(payload if payload is not None else {}).encode() if method == "POST" else None
        token = (self.data_dir / "token").read_text().strip()
        request = urllib.request.Request(f"{self.url}/taskdeck/v1{path}", data=data, method=method,
                                         headers={"authorization": f"Bearer {token}",
                                                  "content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def acknowledged_events(self) -> set[tuple]:
        events = set()
        for line in list(self.lines):
            match = EVENT_LINE.match(line)
            if match:
                events.add((match["run"], match["action"], int(match["attempt"]), match["phase"]))
        return events

    def wait_dead(self, timeout: float = 60) -> None:
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)

    def stop(self, sig: int) -> None:
        self.process.send_signal(sig)
        self.wait_dead()


def flyte_parent(ledger: Path, reusable: bool = False) -> tuple[str, str]:
    from engine.sdk import inputs_from_strings, load_task, serialize_task

    task = load_task(ROOT / "bench" / "kill9_tasks.py", "pooled_parent" if reusable else "parent")
    spec = serialize_task(task, project="crash", domain="development", root_dir=ROOT / "bench")
    inputs = inputs_from_strings(task, {"n": str(PARENT_N), "ledger": str(ledger)})
    return (base64.b64encode(spec.SerializeToString()).decode(), base64.b64encode(inputs.SerializeToString()).decode())


def trial(data_dir: Path, rng: random.Random, kills: int = 2, sleeps: int = 10, die_after_spawn: bool = False,
          reusable: bool = False, engine_args: tuple[str, ...] = ()) -> dict:
    """One trial; returns its counts (raises AssertionError when an invariant fails). ``reusable``: the
    parent's children run on reusable workers; ``engine_args``: more options for each engine (a backend)."""
    ledger = data_dir.parent / f"{data_dir.name}.ledger"
    engine = HeadlessEngine(data_dir, die_after_spawn=die_after_spawn, engine_args=engine_args)
    task_spec, task_inputs = flyte_parent(ledger, reusable)
    engine.call("POST", "/projects", {"id": "crash"})  # runs go only to projects that exist
    runs = [engine.call("POST", "/runs", {"taskSpec": task_spec, "inputs": task_inputs, "project": "crash",
                                          "domain": "development", "codeDir": str(ROOT / "bench")})["run"]]
    spec = base64.b64encode(sleep_spec().SerializeToString()).decode()
    acknowledged: set[tuple] = set()
    kill_times = []
    if die_after_spawn:
        engine.wait_dead()  # it kills itself inside the parent's launch
        acknowledged |= engine.acknowledged_events()
        engine = HeadlessEngine(data_dir, engine_args=engine_args)
    for _ in range(sleeps):
        inputs = base64.b64encode(sleep_inputs(round(rng.uniform(0, 0.6), 3)).SerializeToString()).decode()
        runs.append(engine.call("POST", "/runs", {"taskSpec": spec, "inputs": inputs})["run"])
    for _ in range(kills):
        kill_times.append(rng.uniform(0.05, 3.0))
        time.sleep(kill_times[-1])
        acknowledged |= engine.acknowledged_events()
        engine.stop(signal.SIGKILL)
        engine = HeadlessEngine(data_dir, engine_args=engine_args)
    deadline = time.time() + 180
    while True:
        listed = {r["run"]: r["phase"] for r in engine.call("GET", "/runs?limit=1000")}
        if all(ActionPhase[listed[r]].is_terminal for r in runs):
            break
        if time.time() > deadline:
            raise AssertionError(f"runs did not finish after the restarts: {listed}\n" + "\n".join(engine.lines))
        time.sleep(0.1)
    parent_result = engine.call("GET", f"/runs/{runs[0]}")
    acknowledged |= engine.acknowledged_events()
    engine.stop(signal.SIGTERM)
    starts = collections.Counter(ledger.read_text().splitlines()) if ledger.exists() else collections.Counter()
    args = list(engine_args or ())
    database = args[args.index("--database") + 1] if "--database" in args else None
    result = asyncio.run(_check(data_dir, runs, acknowledged, parent_result, database))
    result.update(kill_times=kill_times, double_starts=sum(1 for n in starts.values() if n > 1),
                  body_starts=sum(starts.values()))
    return result


async def _check(data_dir: Path, runs: list[str], acknowledged: set, parent_result: dict,
                 database: str | None = None) -> dict:
    """The invariants, read from the runs database: the data directory's SQLite (its integrity checked too),
    or the PostgreSQL database the engines used (``--database``)."""
    if database is not None:
        from engine.store.postgres import PostgresRunsStore

        store = PostgresRunsStore(database)
    else:
        store = SqliteStore(data_dir / "taskdeck.db", read_only=True)
    await store.start()
    try:
        if database is None:
            integrity = await store.integrity_check()
            assert integrity == "ok", integrity
        service = RunsService(store, data_dir)
        recorded = set()
        for run_name in runs:
            run = await service.get_run(run_name)
            assert ActionPhase(run.phase) == ActionPhase.SUCCEEDED, (run_name, ActionPhase(run.phase).name)
            for action in await service.list_actions(run_name):
                events = await service.list_events(action.key)
                keys = [(e.attempt, e.phase, e.version) for e in events]
                assert len(keys) == len(set(keys)), f"duplicate events for {run_name}/{action.name}"
                per_attempt: dict[int, int] = {}
                for e in events:
                    if ActionPhase(e.phase).name in TERMINAL:
                        per_attempt[e.attempt] = per_attempt.get(e.attempt, 0) + 1
                assert all(n == 1 for n in per_attempt.values()), (run_name, action.name, per_attempt)
                recorded |= {(run_name, action.name, e.attempt, ActionPhase(e.phase).name) for e in events}
        assert parent_result["phase"] == "SUCCEEDED" and parent_result["outputs"] == {"o0": PARENT_OUTPUT}, \
            parent_result
        return {"acknowledged": len(acknowledged), "recorded": len(recorded),
                "lost_events": len(acknowledged - recorded)}
    finally:
        await store.close()


def serve(data_dir: str, die_after_spawn: bool, engine_args: list[str] = ()) -> int:
    """The headless engine, optionally made to die right after its first task process is spawned."""
    from console.cli import main as taskdeck
    from engine.plugins import container

    if die_after_spawn:
        plugin = container.LocalContainerPlugin

        def then_die(start):
            async def start_then_die(*args, **kwargs):
                await start(*args, **kwargs)  # the process exists, waiting for its go
                os.kill(os.getpid(), signal.SIGKILL)  # before the launch marker and before the gate opens
            return start_then_die

        plugin._fork, plugin._exec = then_die(plugin._fork), then_die(plugin._exec)  # both start paths
    return taskdeck(["--data-dir", data_dir, "--allow-dir", str(ROOT), "--headless", *engine_args])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kills", type=int, default=2, help="kills per trial")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--die-after-spawn", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine-arg", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.exit(serve(args.serve, args.die_after_spawn, args.engine_arg))
    rng = random.Random(args.seed)
    totals = collections.Counter()
    for i in range(args.trials):
        with tempfile.TemporaryDirectory() as tmp:
            result = trial(Path(tmp) / "data", rng, kills=args.kills, die_after_spawn=i % 5 == 0,
                           reusable=i % 2 == 1)
        totals.update({k: result[k] for k in ("double_starts", "lost_events", "body_starts")})
        print(f"trial {i + 1}{' (reusable children)' if i % 2 == 1 else ''}: killed after {', '.join(f'{t:.2f}s' for t in result['kill_times'])}; "
              f"{result['acknowledged']} acknowledged events, {result['recorded']} recorded, "
              f"{result['body_starts']} task-body starts, {result['double_starts']} double", flush=True)
    print(f"trials: {args.trials}")
    print(f"double_starts: {totals['double_starts']}")
    print(f"lost_events: {totals['lost_events']}")


if __name__ == "__main__":
    main()
