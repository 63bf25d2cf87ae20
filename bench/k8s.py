"""The Kubernetes backend through the API server emulator (tests/kube_apiserver.py, its own process).

1. TaskAction lifecycles per second: N runs of a no-op action (`core-sleep`, duration 0) through an engine
   on the Kubernetes backend, each created (action row + outbox, then the custom resource), reconciled
   (finalizer, plugin, status through the status subresource, terminal labels), seen SUCCEEDED, then deleted
   and seen gone by the informer; the same on the embedded default for the ratio.
2. Watch lag at 10,000 resources: with that many TaskActions in the namespace, the time from a write by
   another client to the engine's informer seeing it (p50, p95).

The emulator is Python, so these figures bound TaskDeck's side plus a slow API server, not a real cluster.

    python bench/k8s.py [--lifecycles 300] [--rounds 3] [--resources 10000] [--writes 300]
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
sys.path.insert(0, str(ROOT / "tests"))

from kubernetes import client  # noqa: E402

from engine.engine import Engine, EngineConfig  # noqa: E402
from engine.phases import ActionPhase  # noqa: E402
from engine.store.kubernetes import GROUP, PLURAL, VERSION, KubernetesResourceStore, to_api  # noqa: E402
from helpers import make_task_action, sleep_inputs, sleep_spec  # noqa: E402

NS = "flyte"


class Emulator:
    def __init__(self, history: int):
        self.process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "kube_apiserver.py"), "--history",
                                         str(history)], stdout=subprocess.PIPE, text=True)
        self.url = self.process.stdout.readline().strip()

    def kubeconfig(self, path: Path) -> Path:
        from kube_apiserver import EmulatorThread

        fake = EmulatorThread()
        fake.port = int(self.url.rsplit(":", 1)[1])
        return fake.kubeconfig(path, NS)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def lifecycles(n: int, backend: dict, data: Path) -> float:
    engine = Engine(EngineConfig(data_dir=data, serve=False, gc_interval_seconds=0, **backend))
    await engine.start()
    try:
        started = time.perf_counter()
        runs = await asyncio.gather(*(engine.runs.create_run(sleep_spec(), sleep_inputs(0)) for _ in range(n)))
        results = await asyncio.gather(*(engine.runs.wait_for_run(r.run_name, timeout=600) for r in runs))
        assert all(r.phase == ActionPhase.SUCCEEDED for r in results)
        names = [f"{r.run_name}-a0" for r in runs]
        await asyncio.gather(*(engine.store.delete(name) for name in names))
        while any(engine.store.peek(name) is not None for name in names):
            await asyncio.sleep(0.005)
        return n / (time.perf_counter() - started)
    finally:
        await engine.stop()


async def watch_lag(url: str, resources: int, writes: int) -> tuple[float, float, float]:
    api_client = client.ApiClient(client.Configuration(host=url))
    api = client.CustomObjectsApi(api_client)

    def fill(start: int, stop: int) -> None:
        for i in range(start, stop):
            api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                to_api(make_task_action(run="rlag", action=f"x{i}"), NS))

    started = time.perf_counter()
    await asyncio.gather(*(asyncio.to_thread(fill, k, min(k + resources // 8 + 1, resources))
                           for k in range(0, resources, resources // 8 + 1)))
    fill_seconds = time.perf_counter() - started
    store = KubernetesResourceStore(client.ApiClient(client.Configuration(host=url)), NS)
    await store.start()
    seen: dict[str, float] = {}
    store.on_change = lambda old, new: new is not None and seen.setdefault(new.resource_version, time.perf_counter())
    lags = []
    try:
        assert len(await store.list()) >= resources
        for i in range(writes):
            name = f"rlag-x{i % resources}"
            wrote = time.perf_counter()
            body = await asyncio.to_thread(api.patch_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, name,
                                           {"metadata": {"labels": {"n": str(i)}}})
            rv = body["metadata"]["resourceVersion"]
            while rv not in seen:
                await asyncio.sleep(0.0005)
            lags.append((seen[rv] - wrote) * 1000)
    finally:
        await store.close()
        api_client.close()
    lags.sort()
    return statistics.median(lags), lags[int(len(lags) * 0.95) - 1], fill_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lifecycles", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--writes", type=int, default=300)
    args = parser.parse_args()
    emulator = Emulator(history=max(2 * args.resources, 10_000))
    try:
        ours, embedded = [], []
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = emulator.kubeconfig(Path(tmp) / "kubeconfig")
            for i in range(args.rounds):  # interleaved: both see the same machine noise
                ours.append(asyncio.run(lifecycles(args.lifecycles, {"backend": "kubernetes", "kubeconfig": kubeconfig},
                                                   Path(tmp) / f"k{i}")))
                embedded.append(asyncio.run(lifecycles(args.lifecycles, {}, Path(tmp) / f"e{i}")))
        print(f"k8s_lifecycles_per_second: {statistics.median(ours):.0f}")
        print(f"embedded_lifecycles_per_second: {statistics.median(embedded):.0f}")
        print(f"k8s_to_embedded_ratio: {statistics.median(ours) / statistics.median(embedded):.2f}")
        p50, p95, fill = asyncio.run(watch_lag(emulator.url, args.resources, args.writes))
        print(f"created_{args.resources}_resources_seconds: {fill:.1f}")
        print(f"watch_lag_ms_p50_at_{args.resources}: {p50:.1f}")
        print(f"watch_lag_ms_p95_at_{args.resources}: {p95:.1f}")
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
