"""Triggers (Flyte's TriggerService): a registered task's schedules, cron or fixed rate, that start runs on time.

* A trigger is deployed with its task (the SDK's ``triggers=``, serialized by the SDK's own ``to_task_trigger``)
  and keeps a revision history: every change of its spec, and every activation or deactivation, is a revision.
* The scheduler fires each occurrence once. A fired run's name is derived from the trigger and the scheduled
  time, so an engine that died between creating the run and moving the trigger's cursor finds the run there
  and does not start it twice. After downtime the missed occurrences are fired oldest first, at most
  ``max_catch_up`` (default 10: the most recent ones; the older are skipped, and the history says so).
* Each run starts at its scheduled time (``runStartTime``), which is what the SDK gives the kickoff-time input
  (``flyte.TriggerTime``); the run records the trigger and the scheduled time in its annotations.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Callable

from flyteidl2.task import common_pb2, task_definition_pb2

from engine.errors import AlreadyExistsError, InvalidRunError
from engine.store.base import TriggerRecord

log = logging.getLogger(__name__)

ANNOTATION_TRIGGER = "taskdeck.flyte.org/trigger"
ANNOTATION_SCHEDULED = "taskdeck.flyte.org/scheduled-time"
DEFAULT_MAX_CATCH_UP = 10
IDLE_POLL_SECONDS = 30.0


class TriggerNotFoundError(LookupError):
    pass


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _rate_window(schedule: common_pb2.Schedule, after: dt.datetime,
                 until: dt.datetime) -> tuple[dt.datetime, dt.timedelta, int]:
    """(the first fixed-rate time after ``after``, the step, how many fall in (after, until])."""
    step = dt.timedelta(minutes=max(schedule.rate.value, 0))
    if schedule.rate.value <= 0:
        return after, dt.timedelta(minutes=1), 0
    start = schedule.rate.start_time.ToDatetime(dt.timezone.utc) if schedule.rate.HasField("start_time") else None
    anchor = start or after
    first = anchor if anchor > after else anchor + step * (int((after - anchor) / step) + 1)
    return first, step, (int((until - first) / step) + 1 if until >= first else 0)


def occurrences(schedule: common_pb2.Schedule, after: dt.datetime, until: dt.datetime,
                limit: int = 100_000) -> list[dt.datetime]:
    """The schedule's times in (after, until], oldest first (at most ``limit``, the most recent ones)."""
    out: list[dt.datetime] = []
    if schedule.HasField("rate"):
        first, step, count = _rate_window(schedule, after, until)
        return [first + step * i for i in range(max(0, count - limit), count)]
    expression = schedule.cron.expression if schedule.HasField("cron") else schedule.cron_expression
    if not expression:
        return []
    from zoneinfo import ZoneInfo

    from croniter import croniter

    zone = ZoneInfo(schedule.cron.timezone or "UTC") if schedule.HasField("cron") else dt.timezone.utc
    it = croniter(expression, after.astimezone(zone))
    while True:
        when = it.get_next(dt.datetime).astimezone(dt.timezone.utc)
        if when > until:
            break
        out.append(when)
        if len(out) > limit:
            out.pop(0)  # keep the most recent ``limit``
    return out


SKIP_COUNT_CAP = 100_000  # missed cron occurrences counted one by one for the history note, at most


def due_occurrences(schedule: common_pb2.Schedule, after: dt.datetime, until: dt.datetime,
                    keep: int) -> tuple[list[dt.datetime], int]:
    """(the most recent ``keep`` occurrences in (after, until], oldest first; how many older ones there are),
    without walking every missed occurrence of a long downtime (a cron's are found backwards from ``until``)."""
    if schedule.HasField("rate"):
        first, step, count = _rate_window(schedule, after, until)
        older = max(0, count - keep)
        return [first + step * i for i in range(older, count)], older
    expression = schedule.cron.expression if schedule.HasField("cron") else schedule.cron_expression
    if not expression:
        return [], 0
    from zoneinfo import ZoneInfo

    from croniter import croniter

    zone = ZoneInfo(schedule.cron.timezone or "UTC") if schedule.HasField("cron") else dt.timezone.utc
    backwards = croniter(expression, (until + dt.timedelta(microseconds=1)).astimezone(zone))
    kept: list[dt.datetime] = []
    while len(kept) < keep:
        when = backwards.get_prev(dt.datetime).astimezone(dt.timezone.utc)
        if when <= after:
            break
        kept.append(when)
    kept.reverse()
    if len(kept) < keep or not kept:
        return kept, 0
    older = 0
    forwards = croniter(expression, after.astimezone(zone))
    while older < SKIP_COUNT_CAP:
        when = forwards.get_next(dt.datetime).astimezone(dt.timezone.utc)
        if when >= kept[0]:
            break
        older += 1
    return kept, older


def check_schedule(schedule: common_pb2.Schedule) -> None:
    if schedule.HasField("rate"):
        if schedule.rate.value <= 0 or schedule.rate.unit != common_pb2.FixedRateUnit.FIXED_RATE_UNIT_MINUTE:
            raise InvalidRunError("a fixed-rate trigger needs a positive number of minutes", field="schedule")
        return
    expression = schedule.cron.expression if schedule.HasField("cron") else schedule.cron_expression
    from croniter import croniter

    if not expression or not croniter.is_valid(expression):
        raise InvalidRunError(f"{expression!r} is not a cron expression", field="schedule")
    if schedule.HasField("cron") and schedule.cron.timezone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(schedule.cron.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidRunError(f"unknown time zone {schedule.cron.timezone!r}", field="schedule") from None


def run_name_for(trigger: TriggerRecord, scheduled: dt.datetime) -> str:
    """One name per (trigger, occurrence): creating it twice is refused, so nothing fires twice."""
    key = f"{trigger.project}/{trigger.domain}/{trigger.name}@{scheduled.isoformat()}"
    return "t" + hashlib.sha256(key.encode()).hexdigest()[:19]


class TriggersService:
    def __init__(self, repository, tasks, start_run: Callable, clock: Callable[[], dt.datetime] = utcnow,
                 max_catch_up: int = DEFAULT_MAX_CATCH_UP):
        self.repository = repository
        self.tasks = tasks
        self.start_run = start_run  # (TaskRecord, inputs, name, start time, annotations) → the run
        self.clock = clock
        self.max_catch_up = max_catch_up
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def deploy(self, trigger_bytes: bytes, *, project: str, domain: str, task_name: str,
                     task_version: str) -> TriggerRecord:
        trigger = task_definition_pb2.TaskTrigger()
        try:
            trigger.ParseFromString(trigger_bytes)
        except Exception:  # noqa: BLE001 - a client's bytes
            raise InvalidRunError("trigger is not a serialized flyteidl2 TaskTrigger", field="trigger") from None
        if not trigger.name or not trigger.automation_spec.HasField("schedule"):
            raise InvalidRunError("a trigger needs a name and a schedule (artifact triggers are not supported)",
                                  field="trigger")
        check_schedule(trigger.automation_spec.schedule)
        await self.tasks.get(project, domain, task_name, task_version)  # the task must be registered
        record = await self.repository.trigger_put(project, domain, trigger.name, task_name, task_version,
                                                   trigger.SerializeToString(deterministic=True),
                                                   trigger.spec.active, self.clock().timestamp())
        self._changed.set()
        return record

    async def set_active(self, name: str, active: bool, *, project: str, domain: str) -> TriggerRecord:
        record = await self.repository.trigger_set_active(project, domain, name, active, self.clock().timestamp())
        if record is None:
            raise TriggerNotFoundError(f"no trigger {name!r} in {project}/{domain}")
        self._changed.set()
        return record

    async def list(self, project: str | None = None, domain: str | None = None) -> list[TriggerRecord]:
        return await self.repository.trigger_list(project, domain)

    async def history(self, name: str, *, project: str, domain: str) -> list[dict]:
        return await self.repository.trigger_history(project, domain, name)

    # ------------------------------------------------------------------ the scheduler
    async def tick(self) -> int:
        """Fire every due occurrence of every active trigger; how many runs it started."""
        now = self.clock()
        fired = 0
        for trigger in await self.repository.trigger_list():
            if not trigger.active:
                continue
            spec = task_definition_pb2.TaskTrigger()
            spec.ParseFromString(trigger.spec)
            after = dt.datetime.fromtimestamp(trigger.cursor, dt.timezone.utc)
            due, skipped = due_occurrences(spec.automation_spec.schedule, after, now, self.max_catch_up)
            if skipped:
                count = f"more than {SKIP_COUNT_CAP}" if skipped >= SKIP_COUNT_CAP else str(skipped)
                await self.repository.trigger_note(trigger.project, trigger.domain, trigger.name,
                                                   f"skipped {count} missed occurrence(s) before "
                                                   f"{due[0].isoformat()} (at most {self.max_catch_up} are "
                                                   "caught up)", now.timestamp())
            for scheduled in due:
                fired += await self._fire(trigger, spec, scheduled)
                await self.repository.trigger_advance(trigger.project, trigger.domain, trigger.name,
                                                      scheduled.timestamp())
        return fired

    async def _fire(self, trigger: TriggerRecord, spec: task_definition_pb2.TaskTrigger, scheduled: dt.datetime) -> int:
        try:
            task = await self.tasks.get(trigger.project, trigger.domain, trigger.task_name, trigger.task_version)
        except LookupError as exc:  # its task version is gone: the occurrence is recorded as not run
            log.warning("trigger %s: %s", trigger.name, exc)
            await self.repository.trigger_note(trigger.project, trigger.domain, trigger.name,
                                               f"did not run {scheduled.isoformat()}: {exc}", self.clock().timestamp())
            return 0
        annotations = {ANNOTATION_TRIGGER: trigger.name, ANNOTATION_SCHEDULED: scheduled.isoformat()}
        name = run_name_for(trigger, scheduled)
        try:
            await self.start_run(task, spec.spec.inputs, name, scheduled, annotations)
        except AlreadyExistsError:
            return 0  # fired before the cursor moved (an engine that died in between)
        except Exception as exc:  # noqa: BLE001 - one bad occurrence must not stop the scheduler
            log.warning("trigger %s could not start its %s run: %s", trigger.name, scheduled.isoformat(), exc)
            await self.repository.trigger_note(trigger.project, trigger.domain, trigger.name,
                                               f"could not start the {scheduled.isoformat()} run: {exc}",
                                               self.clock().timestamp())
            return 0
        await self.repository.trigger_note(trigger.project, trigger.domain, trigger.name,
                                           f"fired run {name} for {scheduled.isoformat()}", self.clock().timestamp())
        return 1

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="trigger-scheduler")

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - retried at the next tick
                log.warning("trigger scheduler tick failed: %s", exc)
            self._changed.clear()
            wait = await self._seconds_to_next()
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _seconds_to_next(self) -> float:
        now = self.clock()
        soonest = IDLE_POLL_SECONDS
        for trigger in await self.repository.trigger_list():
            if not trigger.active:
                continue
            spec = task_definition_pb2.TaskTrigger()
            spec.ParseFromString(trigger.spec)
            upcoming = occurrences(spec.automation_spec.schedule, now, now + dt.timedelta(seconds=IDLE_POLL_SECONDS))
            if upcoming:
                soonest = min(soonest, max((upcoming[0] - now).total_seconds(), 0.05))
        return soonest

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
