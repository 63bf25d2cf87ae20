"""kill -9 the engine at random moments, restart it, and check the run and event invariants.

Each trial: a headless engine (a subprocess) takes 15 core-sleep runs and one real `flyte` task, is
SIGKILLed after a random delay, and is restarted on the same data directory. Then:
  * the database passes PRAGMA integrity_check;
  * every run reaches a terminal phase, and every one SUCCEEDED (nothing here should fail);
  * every event the first engine acknowledged (printed after its commit) is in the database;
  * no (action, attempt, phase, version) is recorded twice, no attempt has two terminal events;
  * the flyte task's output is right whether its process was adopted or re-run.

    python bench/kill9.py [--trials 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import re
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


class HeadlessEngine:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "--data-dir", str(data_dir), "--headless"], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(f"{self.url}/taskdeck/v1{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def acknowledged_events(self) -> set[tuple]:
        events = set()
        for line in list(self.lines):
            match = EVENT_LINE.match(line)
            if match:
                events.add((match["run"], match["action"], int(match["attempt"]), match["phase"]))
        return events

    def stop(self, sig: int) -> None:
        self.process.send_signal(sig)
        self.process.wait(timeout=60)
        self._reader.join(timeout=5)


def _flyte_task() -> tuple[str, str]:
    from engine.sdk import inputs_from_strings, load_task, serialize_task

    task = load_task(ROOT / "examples" / "basics.py", "add")
    spec = serialize_task(task, project="crash", domain="dev", root_dir=ROOT / "examples")
    inputs = inputs_from_strings(task, {"x": "40", "y": "2"})
    return (base64.b64encode(spec.SerializeToString()).decode(), base64.b64encode(inputs.SerializeToString()).decode())


def trial(data_dir: Path, rng: random.Random, flyte_task: tuple[str, str]) -> dict:
    import signal

    first = HeadlessEngine(data_dir)
    runs = []
    spec = base64.b64encode(sleep_spec().SerializeToString()).decode()
    task_spec, task_inputs = flyte_task
    runs.append(first.call("POST", "/runs", {"taskSpec": task_spec, "inputs": task_inputs, "project": "crash",
                                             "domain": "dev", "codeDir": str(ROOT / "examples")})["run"])
    kill_after = rng.uniform(0.05, 1.2)
    started = time.time()
    for _ in range(15):
        inputs = base64.b64encode(sleep_inputs(round(rng.uniform(0, 0.6), 3)).SerializeToString()).decode()
        runs.append(first.call("POST", "/runs", {"taskSpec": spec, "inputs": inputs})["run"])
    time.sleep(max(0.0, kill_after - (time.time() - started)))
    acknowledged = first.acknowledged_events()
    first.stop(signal.SIGKILL)

    second = HeadlessEngine(data_dir)
    deadline = time.time() + 120
    while True:
        listed = {r["run"]: r["phase"] for r in second.call("GET", "/runs?limit=1000")}
        if all(ActionPhase[listed[r]].is_terminal for r in runs):
            break
        if time.time() > deadline:
            raise AssertionError(f"runs did not finish after the restart: {listed}")
        time.sleep(0.1)
    flyte_result = second.call("GET", f"/runs/{runs[0]}")
    second.stop(signal.SIGTERM)
    return asyncio.run(_check(data_dir, runs, acknowledged, flyte_result, kill_after))


async def _check(data_dir: Path, runs: list[str], acknowledged: set, flyte_result: dict, kill_after: float) -> dict:
    store = SqliteStore(data_dir / "taskdeck.db", read_only=True)
    await store.start()
    try:
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
        lost = acknowledged - recorded
        assert not lost, f"acknowledged events lost: {sorted(lost)}"
        assert flyte_result["phase"] == "SUCCEEDED" and flyte_result["outputs"] == {"o0": 42}, flyte_result
        return {"kill_after": kill_after, "acknowledged": len(acknowledged), "recorded": len(recorded)}
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    task = _flyte_task()
    passed = 0
    for i in range(args.trials):
        with tempfile.TemporaryDirectory() as tmp:
            result = trial(Path(tmp), rng, task)
        passed += 1
        print(f"trial {i + 1}: killed after {result['kill_after']:.2f}s, {result['acknowledged']} acknowledged "
              f"events kept, {result['recorded']} recorded", flush=True)
    print(f"kill9_trials_passed: {passed}/{args.trials}")


if __name__ == "__main__":
    main()
