"""What the runs screen shows: its filter language and its sort keys. No Textual here.

Filter text is terms separated by spaces; every term must match:

    phase:failed,timed    phases by name or prefix (comma = any of)
    task:square           task name contains
    project:demo          project (``project:demo/dev`` also sets the domain)
    domain:development    domain
    anything else         free text: run, task, phase, project/domain or error contains it
"""

from __future__ import annotations

import dataclasses

from engine.client import Action, ActionPhase

FAILED_PHASES = frozenset({ActionPhase.FAILED, ActionPhase.TIMED_OUT, ActionPhase.ABORTED})
FIELDS = ("phase", "task", "project", "domain")

# key -> (column, how a record sorts, whether the natural order is descending)
SORT_KEYS = {
    "started": ("started", lambda r: r.created_at or 0.0, True),
    "duration": ("duration", lambda r: r.duration_ms if r.duration_ms is not None else float("inf"), True),
    "phase": ("phase", lambda r: r.phase, False),
    "task": ("task", lambda r: (r.task_name or r.short_name or "").lower(), False),
    "attempts": ("attempts", lambda r: r.attempts, True),
    "run": ("run", lambda r: r.run_name, False),
    "project": ("project", lambda r: (r.project, r.domain, -(r.created_at or 0.0)), False),  # grouped, newest first
}
SORT_ORDER = tuple(SORT_KEYS)


@dataclasses.dataclass
class RunQuery:
    phases: frozenset[int] = frozenset()
    task: str = ""
    project: str = ""
    domain: str = ""
    words: tuple[str, ...] = ()
    failed_only: bool = False
    errors: tuple[str, ...] = ()  # terms that could not be understood (shown, then ignored)

    @classmethod
    def parse(cls, text: str, failed_only: bool = False) -> RunQuery:
        query = cls(failed_only=failed_only)
        words: list[str] = []
        errors: list[str] = []
        phases: set[int] = set()
        for term in text.split():
            field, sep, value = term.partition(":")
            field = field.lower()
            if not sep or field not in FIELDS:
                words.append(term.lower())
                continue
            if not value:
                errors.append(f"{field}: needs a value")
            elif field == "phase":
                for name in value.upper().split(","):
                    matches = [p for p in ActionPhase if p.name.startswith(name) and name]
                    if matches:
                        phases.update(int(p) for p in matches)
                    else:
                        errors.append(f"no phase {name.lower()!r}")
            elif field == "task":
                query.task = value.lower()
            elif field == "project":
                project, _, domain = value.partition("/")
                query.project = project
                query.domain = domain or query.domain
            else:
                query.domain = value
        query.phases = frozenset(phases)
        query.words = tuple(words)
        query.errors = tuple(errors)
        return query

    @property
    def active(self) -> bool:
        return bool(self.phases or self.task or self.project or self.domain or self.words or self.failed_only)

    def matches(self, record: Action) -> bool:
        if self.failed_only and record.phase not in FAILED_PHASES:
            return False
        if self.phases and record.phase not in self.phases:
            return False
        if self.task and self.task not in (record.task_name or record.short_name or "").lower():
            return False
        if self.project and record.project != self.project:
            return False
        if self.domain and record.domain != self.domain:
            return False
        if self.words:
            haystack = " ".join(str(x) for x in (
                record.run_name, record.task_name, record.short_name, ActionPhase(record.phase).name,
                f"{record.project}/{record.domain}", record.error_message, record.error_code)).lower()
            return all(word in haystack for word in self.words)
        return True


def next_sort_key(current: str) -> str:
    return SORT_ORDER[(SORT_ORDER.index(current) + 1) % len(SORT_ORDER)]
