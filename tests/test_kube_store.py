"""The TaskAction store over the Kubernetes API (engine/store/kubernetes.py), against the API server emulator
with the official client: what only a remote store has to get right (read-your-writes before the informer,
an informer that resumes and relists, writes from other clients, an unreachable server, the runs database
beside it). The interface's shared semantics (conflicts, the status subresource, selectors, finalizers,
cascade) run on both stores in tests/test_store.py."""

from __future__ import annotations

import asyncio
import copy
import time

import pytest
from kubernetes import client

from engine.store.base import AlreadyExistsError, ConflictError, GoneError
from engine.store.kubernetes import GROUP, PLURAL, VERSION, KubernetesResourceStore, _Pending, to_api
from engine.errors import StorageUnavailableError
from helpers import make_task_action
from kube_apiserver import ApiServer, EmulatorThread

NS = "flyte"


@pytest.fixture
def emulator():
    with EmulatorThread(ApiServer(history=200)) as running:
        yield running


@pytest.fixture
async def store(emulator):
    api_client = client.ApiClient(client.Configuration(host=emulator.url))
    s = KubernetesResourceStore(api_client, NS, watch_seconds=1)
    await s.start()
    yield s
    await s.close()
    api_client.close()


async def next_event(watch, timeout: float = 5):
    return await asyncio.wait_for(watch.__anext__(), timeout)


async def settled(store, predicate, timeout: float = 5):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the informer did not catch up"
        await asyncio.sleep(0.02)


def custom(emulator) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(client.ApiClient(client.Configuration(host=emulator.url)))


async def test_create_assigns_identity_reads_its_own_writes_and_rejects_duplicates(store):
    created = await store.create(make_task_action())
    assert created.metadata.uid and created.metadata.creation_timestamp is not None and created.resource_version
    assert store.peek(created.name).metadata.uid == created.metadata.uid  # before the informer saw it
    with pytest.raises(AlreadyExistsError):
        await store.create(make_task_action())


async def test_writes_refresh_the_callers_object_and_keep_their_own_copy(store):
    obj = make_task_action()
    await store.create(obj)
    first = obj.resource_version
    assert obj.metadata.uid and first
    obj.status.attempts = 4
    await store.update_status(obj)
    assert obj.resource_version != first
    obj.status.attempts = 99
    assert (await store.get(obj.name)).status.attempts == 4


async def test_watch_delivers_changes_in_order_and_resumes_from_a_version(store):
    watch = store.watch(store.resource_version)
    obj = await store.create(make_task_action())
    obj.status.attempts = 2
    await store.update_status(obj)
    seen = [await next_event(watch) for _ in range(2)]
    assert [e.type for e in seen] == ["ADDED", "MODIFIED"]
    assert seen[1].object.status.attempts == 2
    await watch.aclose()
    resumed = store.watch(seen[0].resource_version)
    event = await next_event(resumed)
    assert event.type == "MODIFIED" and event.resource_version == seen[1].resource_version
    await resumed.aclose()
    with pytest.raises(GoneError):
        store.watch("not-one-of-ours")


async def test_a_write_reply_that_arrives_after_later_events_does_not_hide_them(store, emulator):
    """The reconciler can act on the informer's ADDED event before create() returns; create's late reply must
    not then stand in front of the newer version (every later write would conflict, forever)."""
    api = custom(emulator)
    obj = make_task_action()
    watch = store.watch(store.resource_version)
    run = store._run

    async def reply_late(fn, *args, **kwargs):
        body = await run(fn, *args, **kwargs)
        if fn.__name__ == "create_namespaced_custom_object":  # another writer acts before the reply lands
            assert (await next_event(watch)).type == "ADDED"
            await run(api.patch_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, obj.name,
                      {"metadata": {"labels": {"seen": "yes"}}})
            assert (await next_event(watch)).type == "MODIFIED"
        return body

    store._run = reply_late
    await store.create(obj)
    store._run = run
    current = store.peek(obj.name)
    assert current.metadata.labels.get("seen") == "yes"
    current = current.copy_deep()
    current.metadata.finalizers.append("x")
    await store.update(current)  # based on what peek shows: no conflict


async def test_a_conflict_gives_up_this_stores_view_for_the_informers(store, emulator):
    """Should a write's reply still stand in front of a newer version (one the informer delivered in a relist,
    say), the conflict it causes ends that: the retry reads what the informer has."""
    obj = await store.create(make_task_action())
    await settled(store, lambda: store._cache.get(obj.name) is not None and not store._overlay)
    old = store.peek(obj.name)
    await asyncio.to_thread(custom(emulator).patch_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, obj.name,
                            {"metadata": {"labels": {"by": "other"}}})
    await settled(store, lambda: store._cache[obj.name].metadata.labels.get("by") == "other")
    store._overlay[obj.name] = _Pending(old.resource_version, old, old.metadata.uid)  # a stale overlay
    assert store.peek(obj.name) is old
    with pytest.raises(ConflictError):
        await store.update(old.copy_deep())
    retry = store.peek(obj.name).copy_deep()
    assert retry.metadata.labels.get("by") == "other"
    retry.metadata.finalizers.append("x")
    await store.update(retry)


async def test_writes_of_other_clients_reach_the_cache_and_the_watch(store, emulator):
    watch = store.watch(store.resource_version)
    other = custom(emulator)
    body = to_api(make_task_action(action="x1"), NS)
    await asyncio.to_thread(other.create_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, body)
    event = await next_event(watch)
    assert event.type == "ADDED" and store.peek("rtest-x1") is not None
    await asyncio.to_thread(other.delete_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "rtest-x1")
    assert (await next_event(watch)).type == "DELETED" and store.peek("rtest-x1") is None


async def test_an_expired_watch_relists_and_turns_the_difference_into_events(store, emulator):
    kept = await store.create(make_task_action(action="kept"))
    lost = await store.create(make_task_action(action="lost"))
    await settled(store, lambda: store._overlay == {})
    watch = store.watch(store.resource_version)

    def behind_the_informers_back(server):
        """Changes whose events the informer never gets (compacted away), then a 410 on its next watch."""
        objects = server.store.objects
        del objects[(PLURAL, NS, lost.name)]
        added = copy.deepcopy(objects[(PLURAL, NS, kept.name)])
        added["metadata"].update(name="rtest-new", uid="uid-new", resourceVersion=server.store.bump())
        added["spec"]["actionName"] = "new"
        objects[(PLURAL, NS, "rtest-new")] = added
        objects[(PLURAL, NS, kept.name)]["metadata"]["labels"]["moved"] = "yes"
        objects[(PLURAL, NS, kept.name)]["metadata"]["resourceVersion"] = server.store.bump()
        server.fail_next("GET", PLURAL, 410)

    emulator.call(behind_the_informers_back)
    events = sorted([(e.type, e.object.name) for e in [await next_event(watch, 10) for _ in range(3)]])
    assert events == [("ADDED", "rtest-new"), ("DELETED", lost.name), ("MODIFIED", kept.name)]
    assert store.relists == 1 and store.peek(lost.name) is None
    assert store.peek(kept.name).metadata.labels["moved"] == "yes"


async def test_a_second_store_lists_what_the_first_wrote(store, emulator):
    obj = await store.create(make_task_action())
    obj.status.attempts = 3
    await store.update_status(obj)
    api_client = client.ApiClient(client.Configuration(host=emulator.url))
    again = KubernetesResourceStore(api_client, NS, watch_seconds=1)
    await again.start()
    try:
        loaded = await again.get(obj.name)
        assert loaded.status.attempts == 3 and loaded.metadata.uid == obj.metadata.uid
        assert loaded.resource_version == obj.resource_version
    finally:
        started = time.monotonic()
        await again.close()
        assert time.monotonic() - started < 3  # the informer's open watch does not hold the engine's stop
        api_client.close()


async def test_an_unreachable_api_server_is_a_storage_fault(emulator):
    api_client = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    s = KubernetesResourceStore(api_client, NS)
    with pytest.raises(StorageUnavailableError):
        await s.start()
    api_client.close()


# ----------------------------------------------------------------------------- with the runs database
def cluster_store(emulator, tmp_path):
    from engine.store.cluster import ClusterStore
    from engine.store.sqlite import SqliteStore

    api_client = client.ApiClient(client.Configuration(host=emulator.url))
    return ClusterStore(KubernetesResourceStore(api_client, NS, watch_seconds=1), SqliteStore(tmp_path / "db.sqlite"))


def run_record(action="a0", parent=None):
    from engine.store.base import ActionRecord

    return ActionRecord(project="p", domain="d", run_name="rtest", name=action, parent_action_name=parent,
                        created_at=1.0, updated_at=1.0)


async def test_an_engine_killed_between_the_row_and_the_resource_creates_it_at_its_next_start(emulator, tmp_path):
    first = cluster_store(emulator, tmp_path)
    await first.start()
    try:  # what create_run_action writes before the resource: the row, with the resource in the outbox
        await first.runs.outbox_create_run_action(run_record(), make_task_action(), None)
        assert first.peek("rtest-a0") is None
    finally:
        await first.close()
    second = cluster_store(emulator, tmp_path)
    await second.start()
    try:
        created = second.peek("rtest-a0")
        assert created is not None and created.metadata.uid
        assert await second.runs.outbox_pending() == []
        assert (await second.get_action(("p", "d", "rtest", "a0"))).phase == 1  # QUEUED, one row
    finally:
        await second.close()
    third = cluster_store(emulator, tmp_path)  # a start with nothing pending creates nothing twice
    await third.start()
    try:
        assert [o.metadata.uid for o in await third.list()] == [created.metadata.uid]
    finally:
        await third.close()


async def test_the_actions_table_catches_up_with_changes_made_while_the_engine_was_down(emulator, tmp_path):
    from engine.phases import ActionPhase, ConditionType

    store = cluster_store(emulator, tmp_path)
    await store.start()
    obj = make_task_action()
    await store.create_run_action(run_record(), obj, None)
    await store.close()
    done = await asyncio.to_thread(custom(emulator).get_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                                   obj.name)  # another engine (the leader before a failover) finished it
    done["status"] = {"attempts": 1, "conditions": [
        {"type": ConditionType.SUCCEEDED, "status": "True", "reason": "Succeeded", "message": "",
         "lastTransitionTime": "2026-12-02T10:00:00Z"}]}
    await asyncio.to_thread(custom(emulator).replace_namespaced_custom_object_status, GROUP, VERSION, NS, PLURAL,
                            obj.name, done)
    again = cluster_store(emulator, tmp_path)
    await again.start()
    try:
        await again.settled()
        row = await again.get_action(("p", "d", "rtest", "a0"))
        assert ActionPhase(row.phase) == ActionPhase.SUCCEEDED and row.ended_at is not None
    finally:
        await again.close()


async def test_a_cluster_without_the_crd_says_how_to_install_it():
    from kube_apiserver import core_kinds

    with EmulatorThread(ApiServer(kinds=core_kinds())) as emulator:
        api_client = client.ApiClient(client.Configuration(host=emulator.url))
        s = KubernetesResourceStore(api_client, "team-a")
        with pytest.raises(StorageUnavailableError, match="taskdeck k8s install --namespace team-a"):
            await s.start()
        api_client.close()


async def test_the_informer_outlives_a_relist_that_fails(store, emulator):
    watch = store.watch(store.resource_version)
    emulator.call(lambda server: (server.fail_next("GET", PLURAL, 410), server.fail_next("GET", PLURAL, 500)))
    await asyncio.sleep(2.5)  # the watch ends (1 s), is refused (410), the relist fails (500), and again
    other = custom(emulator)
    await asyncio.to_thread(other.create_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                            to_api(make_task_action(action="late"), NS))
    event = await next_event(watch, 10)
    assert event.object.name == "rtest-late" and store.peek("rtest-late") is not None
