"""One leader among engines pointed at the same namespace: a coordination.k8s.io/v1 Lease, as client-go's
leader election holds one.

A candidate takes the Lease when nobody holds it, when its holder let it lapse (no renewal within
``leaseDurationSeconds``) or released it; every write carries the Lease's resourceVersion, so of two
candidates racing for it one gets a 409 and stays a follower. The leader renews it every
``renew_seconds``; a leader that cannot renew before the Lease would lapse stops leading (its engine
stops reconciling), so two engines never reconcile at once. A leader that stops cleanly releases it, and
a follower takes over at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

LEASE_NAME = "taskdeck-engine"
_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # a MicroTime
_KIND = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime(_FORMAT)


class LeaseElector:
    def __init__(self, api_client, namespace: str, identity: str, *, name: str = LEASE_NAME,
                 lease_seconds: float = 15.0, renew_seconds: float = 5.0, retry_seconds: float = 2.0,
                 clock: Callable[[], float] = time.time):
        from kubernetes import client  # imported here: the embedded default never loads it

        self._api = client.CoordinationV1Api(api_client)
        self.namespace, self.identity, self.name = namespace, identity, name
        self.lease_seconds, self.renew_seconds, self.retry_seconds = lease_seconds, renew_seconds, retry_seconds
        self.clock = clock
        self.role = "candidate"  # "leader" or "follower" once it has tried
        self.holder: str | None = None
        self._renewed = 0.0

    # ------------------------------------------------------------------ one attempt (in a thread)
    def _attempt(self) -> bool:
        from kubernetes.client.rest import ApiException

        now = self.clock()
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {**_KIND, "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, now, 0)}
            try:
                self._api.create_namespaced_lease(self.namespace, body)
            except ApiException as again:
                if again.status == 409:  # another candidate was first
                    return False
                raise
            self.holder = self.identity
            return True
        spec = lease.spec
        holder = spec.holder_identity or ""
        renewed = spec.renew_time.timestamp() if spec.renew_time else 0.0
        lapsed = not holder or renewed + (spec.lease_duration_seconds or self.lease_seconds) < now
        if holder != self.identity and not lapsed:
            self.holder = holder
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = spec.acquire_time.timestamp() if holder == self.identity and spec.acquire_time else now
        body = {**_KIND, "metadata": {"name": self.name, "namespace": self.namespace,
                                      "resourceVersion": lease.metadata.resource_version},
                "spec": self._spec(acquired, now, transitions)}
        try:
            self._api.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:  # written by someone else since the read
                return False
            raise
        self.holder = self.identity
        return True

    def _spec(self, acquired: float, renewed: float, transitions: int) -> dict:
        return {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, int(self.lease_seconds)),
                "acquireTime": _stamp(acquired), "renewTime": _stamp(renewed), "leaseTransitions": transitions}

    async def _try(self) -> bool:
        try:
            won = await asyncio.to_thread(self._attempt)
        except Exception as exc:  # noqa: BLE001 - the API server unreachable: not the leader this round
            log.warning("the leader lease %s/%s could not be read or written: %s", self.namespace, self.name, exc)
            return False
        if won:
            self._renewed = self.clock()
        return won

    # ------------------------------------------------------------------ the engine's use
    async def acquire(self) -> None:
        """Until this engine leads (a follower waits, saying for whom)."""
        said = None
        while not await self._try():
            self.role = "follower"
            if self.holder != said:
                log.warning("following: the lease %s/%s is held by %s; this engine reconciles when it lapses",
                            self.namespace, self.name, self.holder)  # said loudly: a follower is not hung
                said = self.holder
            await asyncio.sleep(self.retry_seconds)
        self.role = "leader"
        log.info("leading: this engine (%s) holds the lease %s/%s", self.identity, self.namespace, self.name)

    async def hold(self, on_lost: Callable[[], object]) -> None:
        """Renew until cancelled; when a renewal cannot be made before the lease would lapse, ``on_lost``."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            if await self._try():
                continue
            if self.holder != self.identity or self.clock() - self._renewed >= self.lease_seconds - self.renew_seconds:
                self.role = "follower"
                log.error("lost the lease %s/%s (held by %s): this engine stops reconciling", self.namespace,
                          self.name, self.holder)
                on_lost()
                return

    async def release(self) -> None:
        """Give the lease up (a follower then takes it at once)."""
        if self.role != "leader":
            return
        self.role = "follower"

        def give_up() -> None:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            self._api.replace_namespaced_lease(self.name, self.namespace, {
                **_KIND, "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": lease.metadata.resource_version},
                "spec": {"holderIdentity": "", "leaseDurationSeconds": 1,
                         "leaseTransitions": lease.spec.lease_transitions or 0}})

        try:
            await asyncio.to_thread(give_up)
        except Exception as exc:  # noqa: BLE001 - it lapses by itself
            log.warning("could not release the lease %s/%s: %s", self.namespace, self.name, exc)
