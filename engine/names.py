"""One rule set for project, domain, run and action names, checked once at every door.

Lengths are flyteidl2's own: the ``buf.validate`` annotations on ``RunIdentifier`` and
``ActionIdentifier`` (project and domain 1-63 characters, run and action names 1-30), evaluated by
protovalidate. Characters follow Flyte's services, because the annotations alone admit ``../x``:
user-given run names must be DNS-1035 labels (``validateRunName``, runs/service/utils.go); project,
domain and action names are DNS-1123 labels (they become label values and part of the TaskAction's
object name ``<run>-<action>``; the SDK's generated child names are base36 and fit). A name that
passes can be a path segment: it holds no ``/``, ``.``, space, NUL or non-ASCII character.
"""

from __future__ import annotations

import functools
import re

from flyteidl2.common import identifier_pb2

from engine.errors import InvalidRunError

ORG = "local"
DEFAULT_NAMESPACE = "flyte"  # the Kubernetes namespace of the TaskActions unless one is given
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_TEXT = "lowercase letters, digits and '-', starting and ending with a letter or digit"


@functools.cache
def _validator():
    import protovalidate  # 40 ms of imports: only names off the fast path need it (a CLI run has none)

    return protovalidate.Validator()


@functools.cache
def _length_rule(message, field: str) -> tuple[int, int]:
    """(min_len, max_len) of a string field, as its buf.validate annotation says."""
    from buf.validate import validate_pb2

    rules = message.DESCRIPTOR.fields_by_name[field].GetOptions().Extensions[validate_pb2.field].string
    return rules.min_len, rules.max_len


# The annotated bounds, read once: a name within them that matches its pattern needs no full evaluation
# (hot: every child action's names are checked); anything else goes to protovalidate for its verdict.
_ACTION_LEN = (identifier_pb2.ActionIdentifier, "name")
_RUN_LEN = (identifier_pb2.RunIdentifier, "name")
_PROJECT_LEN = (identifier_pb2.RunIdentifier, "project")
_DOMAIN_LEN = (identifier_pb2.RunIdentifier, "domain")


def _fast_ok(value: object, field: tuple, pattern: re.Pattern) -> bool:
    if not isinstance(value, str):
        return False
    low, high = _length_rule(*field)
    return low <= len(value) <= high and pattern.fullmatch(value) is not None


class InvalidNameError(InvalidRunError):
    def __init__(self, field: str, rule: str, message: str):
        super().__init__(f"{field}: {message}", field=field)
        self.rule = rule


def _annotations(message, field_names: dict[str, str]) -> None:
    """The message against its buf.validate annotations; the first violation, named as the door names it."""
    violations = _validator().collect_violations(message)
    if violations:
        violation = violations[0].proto
        path = ".".join(e.field_name for e in violation.field.elements)
        raise InvalidNameError(field_names.get(path, path), violation.rule_id, violation.message)


def _pattern(field: str, value: str, pattern: re.Pattern, rule: str, what: str) -> None:
    if not pattern.fullmatch(value):
        raise InvalidNameError(field, rule, f"{value!r} must be {what}")


def _strings(**values) -> None:
    for field, value in values.items():
        if not isinstance(value, str):
            raise InvalidNameError(field, "string", f"must be a string, not {type(value).__name__}")


def check_run_id(project: str, domain: str, run: str, *, new_run: bool = False) -> None:
    """Raise InvalidNameError (its ``field`` names the culprit) unless all three names are acceptable.

    ``new_run``: ``run`` is a name the user chooses for a new run (DNS-1035, Flyte's rule); existing
    runs are only looked up, so any name the engine could have given passes.
    """
    if (_fast_ok(project, _PROJECT_LEN, _DNS1123) and _fast_ok(domain, _DOMAIN_LEN, _DNS1123)
            and _fast_ok(run, _RUN_LEN, _DNS1035 if new_run else _DNS1123)):
        return
    _strings(project=project, domain=domain, run=run)
    _annotations(identifier_pb2.RunIdentifier(org=ORG, project=project, domain=domain, name=run),
                 {"project": "project", "domain": "domain", "name": "run"})
    _pattern("project", project, _DNS1123, "dns1123_label", _DNS1123_TEXT)
    _pattern("domain", domain, _DNS1123, "dns1123_label", _DNS1123_TEXT)
    check_run_name(run, new_run=new_run)


def check_run_name(run: str, *, field: str = "run", new_run: bool = False) -> None:
    if _fast_ok(run, _RUN_LEN, _DNS1035 if new_run else _DNS1123):
        return
    _strings(**{field: run})
    _annotations(identifier_pb2.RunIdentifier(org=ORG, project="p", domain="d", name=run), {"name": field})
    if new_run:
        _pattern(field, run, _DNS1035, "dns1035_label",
                 "a DNS-1035 label: lowercase letters, digits and '-', starting with a letter")
    else:
        _pattern(field, run, _DNS1123, "dns1123_label", _DNS1123_TEXT)


def check_namespace(namespace: str, *, field: str = "namespace") -> None:
    """A Kubernetes namespace: a DNS-1123 label of at most 63 characters."""
    if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS1123.fullmatch(namespace):
        raise InvalidNameError(field, "dns1123_label",
                               f"{namespace!r} is not a DNS label ({_DNS1123_TEXT}; at most 63 characters)")


def check_action_name(action: str, *, field: str = "action") -> None:
    if _fast_ok(action, _ACTION_LEN, _DNS1123):
        return
    _strings(**{field: action})
    _annotations(identifier_pb2.ActionIdentifier(run=identifier_pb2.RunIdentifier(org=ORG, project="p", domain="d",
                                                                                  name="r"), name=action),
                 {"name": field})
    _pattern(field, action, _DNS1123, "dns1123_label", _DNS1123_TEXT)


def check_action_id(action_id: identifier_pb2.ActionIdentifier, *, field: str = "action_id") -> None:
    """An ActionIdentifier as a Connect client sent it: the whole message against its annotations, then the
    character rules; errors name the message's own fields (``action_id.run.name``)."""
    prefixed = {p: f"{field}.{p}" for p in ("run", "run.org", "run.project", "run.domain", "run.name", "name")}
    _annotations(action_id, prefixed)
    run = action_id.run
    for path, value in (("run.project", run.project), ("run.domain", run.domain), ("run.name", run.name),
                        ("name", action_id.name)):
        _pattern(prefixed[path], value, _DNS1123, "dns1123_label", _DNS1123_TEXT)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
# Names that usually hold credentials: kept out of run specs, which the database and the API show.
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW(OR)?D|PASSPHRASE|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|"
                          r"(^|_)AUTH($|_)|(^|_)PAT($|_)", re.IGNORECASE)
MAX_ENV_VARS = 256
MAX_ENV_VALUE_BYTES = 32 * 1024


def check_env_vars(env: object, *, field: str = "envVars") -> dict[str, str]:
    """A run's environment variables: a mapping of valid names to text, none of them a secret."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise InvalidRunError(f"{field} must be an object of NAME: value strings", field=field)
    if len(env) > MAX_ENV_VARS:
        raise InvalidRunError(f"{field} has {len(env)} entries (at most {MAX_ENV_VARS})", field=field)
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise InvalidRunError(f"{field}: {name!r} is not an environment variable name", field=field)
        if not isinstance(value, str) or "\x00" in value or len(value.encode()) > MAX_ENV_VALUE_BYTES:
            raise InvalidRunError(f"{field}.{name} must be text without NUL, at most {MAX_ENV_VALUE_BYTES} bytes",
                                  field=field)
        if _SECRET_NAME.search(name):
            raise InvalidRunError(
                f"{field}.{name} looks like a secret; run specs are stored and shown in clear text, so TaskDeck "
                f"refuses it. Give it to tasks from the engine's own environment instead: "
                f"`taskdeck --headless --pass-env {name}` (a secrets service is planned)", field=field)
    return dict(env)


def check_listen_host(host: str) -> str:
    """An IP address to bind the engine's server to (0.0.0.0 for every interface), not a name."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--listen takes an IP address to bind (0.0.0.0 for every interface), not {host!r}") \
            from None
    return host


def check_advertise_url(url: str, *, field: str = "--advertise-url") -> str:
    """An http(s) address with a host and no path, query or credentials: where task pods reach the engine."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
            or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{field} must be http(s)://HOST[:PORT], as task pods reach the engine, not {url!r}")
    return url.rstrip("/")
