"""The task cache: keys, lookups before execution, population after it, and serialization reservations.

Semantics follow Flyte's executor (taskaction_cache.go): only ``discoverable`` tasks use the cache; a
lookup error fails open (the task runs), a reservation error fails closed (nothing runs, retry later); a
hit copies the cached outputs into the attempt and succeeds without running; a success populates the
cache (CACHE_POPULATED even if the key exists); a failure writes nothing; reservations are released on
success, failure and abort.

Keys. The cache key is the ``flyte`` SDK's (flyte/_internal/runtime/convert.py ``generate_cache_key_hash``):
base64(sha256(inputs_hash + task name + interface_hash + cache version)), inputs minus the task's
``cache_ignore_input_vars``. For children the SDK sends it as ``TaskAction.cache_key``; the engine computes
the same value for roots and for children enqueued without one, so a run and a child with the same task
and inputs share entries. (Flyte's runs service hashes a root's inputs differently from the SDK, so there
a root and a child never share; and the executor hashes the key once more with the inputs, which adds
nothing the SDK key lacks.) Entries are scoped to the task's project, domain and name: a new task version
alone does not bust the cache, a new cache version does.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable

from flyteidl2.core import catalog_pb2, interface_pb2, literals_pb2, tasks_pb2
from flyteidl2.task import common_pb2

from engine.data_store import DataStore, is_remote
from engine.literals import inputs_message
from engine.paths import local_path
from engine.plugins.core import PhaseInfo, StorageFaultError, TaskInfo
from engine.store.base import CacheEntry, CacheStore

log = logging.getLogger(__name__)

# core.CatalogCacheStatus, the values the engine sets
CACHE_MISS = catalog_pb2.CACHE_MISS
CACHE_HIT = catalog_pb2.CACHE_HIT
CACHE_POPULATED = catalog_pb2.CACHE_POPULATED
CACHE_PUT_FAILURE = catalog_pb2.CACHE_PUT_FAILURE

MAX_RESERVATION_HEARTBEAT = 10.0  # seconds (Flyte's maxReservationHeartbeat)
OUTPUTS_FILE = "outputs.pb"
_MSGPACK_TAG = "msgpack"


# ---------------------------------------------------------------------------- keys (the SDK's formula)
def _b64sha(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _canonical_msgpack(data: bytes) -> bytes:
    """Map keys sorted recursively, as the SDK does, so equal dicts hash equally whatever their order."""
    import msgpack

    def canonical(obj):
        if isinstance(obj, dict):
            return {k: canonical(obj[k]) for k in sorted(obj, key=msgpack.packb)}
        if isinstance(obj, (list, tuple)):
            return [canonical(v) for v in obj]
        return obj

    try:
        return msgpack.packb(canonical(msgpack.unpackb(data, strict_map_key=False)))
    except Exception:  # noqa: BLE001 - not msgpack after all: hash the bytes as they are, like the SDK
        return data


def _literal_repr(literal: literals_pb2.Literal) -> bytes:
    if literal.hash:
        return literal.hash.encode()
    if literal.HasField("collection"):
        return b"".join(_literal_repr(item) for item in literal.collection.literals)
    if literal.HasField("map"):
        return b"".join(key.encode() + _literal_repr(literal.map.literals[key]) for key in sorted(literal.map.literals))
    if literal.HasField("scalar") and literal.scalar.HasField("binary") and literal.scalar.binary.tag == _MSGPACK_TAG:
        canonical = _canonical_msgpack(literal.scalar.binary.value)
        if canonical != literal.scalar.binary.value:
            copy = literals_pb2.Literal()
            copy.CopyFrom(literal)
            copy.scalar.binary.value = canonical
            return copy.SerializeToString(deterministic=True)
    return literal.SerializeToString(deterministic=True)


def inputs_hash(inputs: common_pb2.Inputs, ignored: frozenset[str] = frozenset()) -> str:
    named = [n for n in inputs.literals if n.name not in ignored]
    if not named:
        return ""
    return _b64sha(b"".join(n.name.encode() + b":" + _literal_repr(n.value) + b";" for n in named))


def interface_hash(interface: interface_pb2.TypedInterface) -> str:
    ordered = interface_pb2.TypedInterface()
    ordered.CopyFrom(interface)
    for variables in (ordered.inputs, ordered.outputs):
        entries = sorted(variables.variables, key=lambda e: e.key)
        del variables.variables[:]
        variables.variables.extend(entries)
    return _b64sha(ordered.SerializeToString(deterministic=True))


def cache_key(template: tasks_pb2.TaskTemplate, inputs: common_pb2.Inputs) -> str:
    md = template.metadata
    ignored = frozenset(md.cache_ignore_input_vars)
    return _b64sha(f"{inputs_hash(inputs, ignored)}{template.id.name}{interface_hash(template.interface)}"
                   f"{md.discovery_version}")


def is_discoverable(template: tasks_pb2.TaskTemplate | None) -> bool:
    return template is not None and template.HasField("metadata") and template.metadata.discoverable


def catalog_key(template: tasks_pb2.TaskTemplate, key: str) -> str:
    """The entry's key: the cache key within the task's project, domain and name (never its version)."""
    task = template.id
    return f"{task.project}/{task.domain}/{task.name}/{key}"


# ---------------------------------------------------------------------------- the reconciler's cache steps
@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """taskCacheConfig: what one reconcile of a discoverable action needs."""

    key: str  # the catalog key
    owner_id: str  # "<namespace>/<TaskAction name>"
    serializable: bool
    template: tasks_pb2.TaskTemplate


class CacheError(Exception):
    pass


class TaskCache:
    def __init__(self, store: CacheStore, on_released: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time, *, files: DataStore):
        self.store = store
        self.files = files  # where inputs and outputs are: the data directory, or an object store (--raw-data)
        self.clock = clock
        self.on_released = on_released  # wakes actions waiting on a key as soon as its owner finishes
        self._waiting: dict[str, set[str]] = {}  # catalog key -> TaskAction names waiting for it

    async def config(self, template: tasks_pb2.TaskTemplate, spec_cache_key: str, input_path: str, namespace: str,
                     name: str) -> CacheConfig | None:
        """The action's cache config, or None when its task is not discoverable or, its key needing inputs
        that cannot be read, it runs uncached (fail open).

        Raises CacheError for a discoverable task that can never be keyed (no task id).
        """
        if not is_discoverable(template):
            return None
        if not template.HasField("id") or not template.id.name:
            raise CacheError("a discoverable task needs a task id")
        key = spec_cache_key
        if not key:
            try:
                key = cache_key(template, await self._inputs(input_path))
            except (OSError, ValueError) as exc:
                log.warning("%s/%s: no cache key (%s): running without the cache", namespace, name, exc)
                return None
        return CacheConfig(catalog_key(template, key), f"{namespace}/{name}",
                           template.metadata.cache_serializable, template)

    async def before_execution(self, config: CacheConfig, already_running: bool, output_prefix: str,
                               heartbeat: float, waiter: str) -> PhaseInfo | None:
        """evaluateCacheBeforeExecution: a PhaseInfo that short-circuits the plugin, or None to run it.

        Raises CacheError when the reservation cannot be taken (fail closed: requeue, run nothing).
        """
        if not already_running:
            try:
                entry = await self.store.cache_get(config.key)
            except Exception as exc:  # noqa: BLE001 - a lookup failure fails open: the task runs
                log.warning("cache lookup of %s failed, running the task: %s", config.key, exc)
                entry = None
            if entry is not None and await self._copy_outputs(entry, output_prefix):
                self._stop_waiting(config.key, waiter)
                return PhaseInfo.success(TaskInfo(cache_status=CACHE_HIT, additional_reasons=["cache hit"]),
                                         reason="cache hit")
        if not config.serializable:
            return None
        try:
            reservation = await self.store.get_or_extend_reservation(
                config.key, config.owner_id, min(heartbeat, MAX_RESERVATION_HEARTBEAT), self.clock())
        except Exception as exc:  # noqa: BLE001 - fail closed
            raise CacheError(f"cannot take the cache reservation: {exc}") from exc
        if reservation.owner_id == config.owner_id:
            self._stop_waiting(config.key, waiter)
            return None
        self._waiting.setdefault(config.key, set()).add(waiter)
        return PhaseInfo.waiting_for_cache(
            reason=f'waiting for cache to be populated by reservation owner "{reservation.owner_id}"',
            info=TaskInfo(cache_status=CACHE_MISS, additional_reasons=["waiting for serialized cache owner"]))

    async def after_execution(self, config: CacheConfig, succeeded: bool, output_prefix: str, source: tuple) -> int:
        """finalizeCacheAfterExecution: populate on success, then release. Returns the cache status."""
        status = CACHE_MISS
        if succeeded:
            task = config.template.id
            run_name, action_name, attempt = source
            outputs = f"{output_prefix.rstrip('/')}/{OUTPUTS_FILE}"
            if not await self._exists(outputs):
                if config.template.interface.outputs.variables:
                    log.warning("%s succeeded without %s: nothing to cache", config.owner_id, outputs)
                    await self.release(config)
                    return CACHE_PUT_FAILURE
                outputs = ""  # a task without outputs is cached all the same: a hit has nothing to copy
            entry = CacheEntry(
                key=config.key, project=task.project, domain=task.domain, task_name=task.name,
                cache_version=config.template.metadata.discovery_version, task_version=task.version,
                outputs_uri=outputs, run_name=run_name, action_name=action_name, attempt=attempt,
                created_at=self.clock())
            try:
                await self.store.cache_put(entry)
                status = CACHE_POPULATED  # also when the key existed, as in Flyte
            except Exception as exc:  # noqa: BLE001
                log.warning("could not populate the cache for %s: %s", config.key, exc)
                status = CACHE_PUT_FAILURE
        await self.release(config)
        return status

    async def release(self, config: CacheConfig) -> None:
        if config.serializable:
            try:
                await self.store.release_reservation(config.key, config.owner_id)
            except Exception as exc:  # noqa: BLE001 - it expires by itself
                log.warning("could not release the cache reservation of %s: %s", config.key, exc)
        waiters = self._waiting.pop(config.key, set())
        if self.on_released is not None:
            for name in waiters:
                self.on_released(name)

    def _stop_waiting(self, key: str, waiter: str) -> None:
        waiters = self._waiting.get(key)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiting[key]

    async def _inputs(self, input_path: str) -> common_pb2.Inputs:
        """The action's inputs (on an object store, read off the event loop)."""
        data = await self.files.aread(input_path)
        return inputs_message(input_path, lambda _: data)

    async def _exists(self, uri: str) -> bool:
        try:
            return await self.files.aexists(uri)
        except OSError as exc:  # the store failing: storage, not a missing file
            raise StorageFaultError(uri, exc) from exc

    async def _copy_outputs(self, entry: CacheEntry, output_prefix: str) -> bool:
        """Put the cached outputs where this attempt's would go; a vanished source is a miss."""
        if not entry.outputs_uri:
            return True  # the task has no outputs
        source, target = entry.outputs_uri, f"{output_prefix.rstrip('/')}/{OUTPUTS_FILE}"
        if _where(source) == _where(target):
            return True
        try:
            await self.files.acopy(source, target)
        except FileNotFoundError as exc:
            if exc.filename not in (source, local_path(source)):
                raise StorageFaultError(target, exc) from exc
            log.warning("cache entry %s points at missing outputs %s: running the task", entry.key, source)
            return False
        except OSError as exc:  # the attempt's directory (or the store) refuses the copy: storage, not a miss
            raise StorageFaultError(target, exc) from exc
        return True


def _where(uri: str) -> str:
    return uri if is_remote(uri) else os.path.abspath(local_path(uri))
