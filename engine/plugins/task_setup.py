"""What every local task process needs before it runs, shared by the plugins that start them (container,
reusable): the command line with Flyte's template variables substituted, a clean environment, and the
attempt's directories, with the last try's files gone.
"""

from __future__ import annotations

import compileall
import fcntl
import os
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from engine.plugins.attempt_files import STALE_FILES, LayoutError, lay_out
from engine.plugins.core import PhaseInfo, PluginError, StorageFaultError, TaskExecutionContext
from engine.plugins.task_target import primary_container

ANNOTATION_CODE_DIR = "taskdeck.flyte.org/code-dir"
# What a task process keeps of the engine's environment: a Flyte pod sees its image's basics, not the
# node's variables. Anything else reaches tasks only through the engine's --pass-env allow-list.
INHERITED_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})
# The SDK paces a task's enqueues at _F_MAX_QPS (100/s by default): a fan-out of 1,000 took 9.6 s for
# that alone. The engine takes thousands a second; a task's own env may still set its pace.
SDK_DEFAULTS = {"_F_MAX_QPS": "5000"}

# The SDK entrypoint's options naming the code bundle it fetches and unpacks into --dest (`.`: its cwd).
BUNDLE_OPTIONS = ("--tgz", "--pkl")

_TEMPLATE_VAR = re.compile(r"\{\{\s*[.$]([A-Za-z0-9_]+)\s*\}\}")


def substitute_template(arg: str, values: dict[str, str]) -> str:
    """Replace Flyte's ``{{.var}}`` placeholders (case-insensitive, as Flyte's template engine)."""
    if "{{" not in arg:
        return arg  # most of an a0 command line: no regex pass

    def replace(match: re.Match) -> str:
        return values.get(match.group(1).lower(), match.group(0))

    return _TEMPLATE_VAR.sub(replace, arg)


def template_values(tctx: TaskExecutionContext) -> dict[str, str]:
    md = tctx.metadata
    return {
        "input": tctx.input_path,
        "inputprefix": os.path.dirname(tctx.input_path),
        "outputprefix": tctx.output_prefix,
        "rawoutputdataprefix": tctx.raw_output_prefix,
        "checkpointoutputprefix": tctx.checkpoint_prefix,
        "prevcheckpointprefix": tctx.prev_checkpoint_prefix,
        "runname": md.run_name,
        "actionname": md.action_name,
        "runstarttime": md.run_start_time,
        "perretryuniquekey": md.generated_name,
        "namespace": md.namespace,
        "tasktemplatepath": "inline://taskTemplate",
    }


def bundle_in_argv(argv: list[str]) -> str | None:
    """The code bundle an ``a0`` command line fetches (``--tgz``/``--pkl``, as a cluster's fast registration
    ships code), or None: it runs from a code directory."""
    for i, arg in enumerate(argv[:-1]):
        if arg in BUNDLE_OPTIONS:
            return argv[i + 1]
    for arg in argv:
        option, _, value = arg.partition("=")
        if option in BUNDLE_OPTIONS and value:
            return value
    return None


def unpack_once(bundle: str, target: str | None = None) -> str:
    """``target`` (default ``<bundle>.code``): the bundle unpacked once, under a lock, and compiled, with the
    SDK's own completion marker so the ``a0`` of every attempt finds its code there and fetches nothing
    (``flyte._code_bundle``). It appears whole (a rename), so a directory there is a finished one."""
    target = target or f"{bundle}.code"
    if os.path.isdir(target):
        return target
    name = os.path.basename(bundle)
    tarball = bundle.endswith((".tar.gz", ".tgz"))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    with open(f"{bundle}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(target):
            return target
        staging = tempfile.mkdtemp(prefix=".unpack-", dir=parent)
        try:
            if tarball:
                with tarfile.open(bundle, "r:*") as archive:
                    archive.extractall(staging, filter="data")  # no absolute paths, no links out, no devices
                # compiled once here: every attempt's tree links the .pyc files too (same source times)
                compileall.compile_dir(staging, quiet=2, workers=1)
            else:  # a pickled bundle: a0 loads the file itself
                shutil.copyfile(bundle, os.path.join(staging, name))
            Path(staging, f".{name}.extracted" if tarball else f".{name}.done").touch()
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


class TaskProcessSetup:
    def __init__(self, bin_dir: str | None = None, pass_env: tuple[str, ...] = ()):
        self.bin_dir = bin_dir or str(Path(sys.executable).parent)
        self.pass_env = frozenset(pass_env)
        self._inherited: tuple[int, dict[str, str]] | None = None

    def inherited(self) -> dict[str, str]:
        """What task processes keep of the engine's environment (re-read only when that changes size)."""
        if self._inherited is None or self._inherited[0] != len(os.environ):
            kept = {k: v for k, v in os.environ.items()
                    if k in INHERITED_ENV or k.startswith("LC_") or k in self.pass_env}
            kept["PATH"] = os.pathsep.join([self.bin_dir, kept.get("PATH", os.defpath)])
            self._inherited = (len(os.environ), kept)
        return dict(self._inherited[1])

    def argv(self, tctx: TaskExecutionContext) -> list[str]:
        container = primary_container(tctx.task_template)
        values = template_values(tctx)
        argv = [substitute_template(a, values) for a in list(container.command) + list(container.args)]
        if not argv:
            raise PluginError("container has neither command nor args", code="BadTaskSpecification")
        if os.sep not in argv[0]:
            resolved = shutil.which(argv[0], path=os.pathsep.join([self.bin_dir, os.environ.get("PATH", "")]))
            if resolved is None:
                raise PluginError(f"executable {argv[0]!r} not found on PATH", code="BadTaskSpecification")
            argv[0] = resolved
        return argv

    def environment(self, tctx: TaskExecutionContext) -> tuple[dict[str, str], dict[str, str]]:
        """(what every action of the task environment shares, what is this action's own)."""
        md = tctx.metadata
        shared = self.inherited()
        shared.update(SDK_DEFAULTS)
        shared.update({kv.key: kv.value for kv in primary_container(tctx.task_template).env})
        shared.update(tctx.runtime_env)
        shared.update({
            "FSSPEC_FILE_AUTO_MKDIR": "true",  # the SDK writes child inputs to dirs nobody created
            "PYTHONUNBUFFERED": "1",
        })
        own = {"FLYTE_INTERNAL_EXECUTION_PROJECT": md.project, "FLYTE_INTERNAL_EXECUTION_DOMAIN": md.domain}
        own.update(md.environment)  # ACTION_NAME, RUN_NAME, _U_RUN_BASE, _U_ORG_NAME, the credential win
        own.update(tctx.secret_env)  # the secrets it asks for, as the SDK's Secret names their variables
        return shared, own

    def code_dir(self, tctx: TaskExecutionContext, per_attempt: bool = True) -> str:
        """Where the task runs: its code directory; for a task that fetches a code bundle, a directory of the
        attempt's own (``per_attempt``: a fresh process), else one per bundle (a pool of reusable workers)."""
        return self._code_dir(tctx, self._bundle(tctx), per_attempt)

    @staticmethod
    def _code_dir(tctx: TaskExecutionContext, bundle: str | None, per_attempt: bool) -> str:
        if bundle is None:
            return tctx.metadata.annotations.get(ANNOTATION_CODE_DIR) or tctx.output_prefix
        return os.path.join(tctx.output_prefix, "code") if per_attempt else f"{bundle}.code"

    @staticmethod
    def _bundle(tctx: TaskExecutionContext) -> str | None:
        """The code bundle the task's command line fetches (its path holds no template variable), unless it
        runs from a code directory."""
        if tctx.metadata.annotations.get(ANNOTATION_CODE_DIR):
            return None
        container = primary_container(tctx.task_template)
        return bundle_in_argv(list(container.args)) or bundle_in_argv(list(container.command))

    def needs_files(self, tctx: TaskExecutionContext) -> bool:
        """Whether preparing this action unpacks a code bundle (file work to do off the event loop); linking
        an unpacked one into an attempt's directory is a few calls, done in place."""
        bundle = self._bundle(tctx)
        return bundle is not None and not os.path.isdir(f"{bundle}.code")

    def plan(self, tctx: TaskExecutionContext, make_dirs: bool = True, per_attempt: bool = True) \
            -> tuple[str, dict] | PhaseInfo:
        """(the working directory, the attempt's layout for ``attempt_files.lay_out``), or a failure when the
        task's code (its directory or its bundle) is gone. The bundle is unpacked here (once per bundle);
        the rest is left to whoever starts the task. ``make_dirs``: else whoever writes there makes them."""
        bundle = self._bundle(tctx)
        cwd = self._code_dir(tctx, bundle, per_attempt)
        layout: dict = {"dirs": [tctx.output_prefix, tctx.checkpoint_prefix, str(tctx.log_path.parent)]
                        if make_dirs else [],
                        "link": None, "stale": [os.path.join(tctx.output_prefix, f) for f in STALE_FILES]}
        if bundle is not None:
            if not os.path.isfile(bundle):
                where = "not a local file" if "://" in bundle else "missing"
                return PhaseInfo.failure("CodeBundleMissing", f"the task's code bundle {bundle} is {where}: upload "
                                         "it again (run or deploy the task again)")
            try:
                unpacked = unpack_once(bundle)
            except (OSError, tarfile.TarError) as exc:
                return _unreadable(bundle, exc)
            layout["bundle"] = bundle
            if cwd != unpacked:
                layout["link"] = [unpacked, cwd]
        elif cwd != tctx.output_prefix and not os.path.isdir(cwd):
            return PhaseInfo.failure("BadTaskSpecification", f"code directory {cwd} does not exist")
        return cwd, layout

    def prepare(self, tctx: TaskExecutionContext, make_dirs: bool = True, per_attempt: bool = True) -> str | PhaseInfo:
        """``plan`` and lay it out here: the working directory, or a failure."""
        planned = self.plan(tctx, make_dirs, per_attempt)
        if isinstance(planned, PhaseInfo):
            return planned
        cwd, layout = planned
        if not make_dirs and not os.path.isdir(tctx.output_prefix):
            layout["stale"] = []  # a first try: nothing stale
        try:
            lay_out(layout)
        except LayoutError as exc:
            return layout_failure(exc, layout)
        if not os.path.isdir(cwd):
            return PhaseInfo.failure("BadTaskSpecification", f"code directory {cwd} does not exist")
        return cwd


def layout_failure(exc: LayoutError, layout: dict) -> PhaseInfo:
    """A layout that could not be made: the code's tree (the bundle's failure) or storage (raised)."""
    if exc.part == "code" and layout.get("bundle"):
        return _unreadable(layout["bundle"], exc.error)
    raise StorageFaultError(exc.path, exc.error) from exc


def _unreadable(bundle: str, exc: Exception) -> PhaseInfo:
    return PhaseInfo.failure("CodeBundleUnreadable", f"the task's code bundle {bundle} cannot be unpacked: {exc}")
