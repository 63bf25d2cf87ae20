"""Flyte's control plane, served so the stock ``flyte`` CLI and ``flyte.init(endpoint=...)`` use this engine:
RunService, DataProxyService, ClusterService, TaskService, ProjectService, SecretService,
TriggerService and IdentityService (Connect,
flyteidl2's generated ASGI apps), the signed upload route and the run page the CLI's run URL opens.

Only the owner's credential reaches them (a task's run credential reaches only the SDK's controller
services, ``engine/connect.py``). The CLI sends it over the TLS listener (``engine/tls.py`` says why),
from the command in the config ``taskdeck flyte-config`` writes. See ../shared reference
flyte-cli-backend.md for the RPCs each command calls.
"""

from __future__ import annotations

import asyncio
import html
from pathlib import Path

from flyteidl2.auth.identity_connect import IdentityServiceASGIApplication
from flyteidl2.cluster.service_connect import ClusterServiceASGIApplication
from flyteidl2.dataproxy.dataproxy_service_connect import DataProxyServiceASGIApplication
from flyteidl2.project.project_service_connect import ProjectServiceASGIApplication
from flyteidl2.secret.secret_connect import SecretServiceASGIApplication
from flyteidl2.task.task_service_connect import TaskServiceASGIApplication
from flyteidl2.trigger.trigger_service_connect import TriggerServiceASGIApplication
from flyteidl2.workflow.run_service_connect import RunServiceASGIApplication

from engine.auth import Authority
from engine.client.local import LocalClient
from engine.connect import disconnect_aware
from engine.control_plane.catalog import IdentityServiceImpl, ProjectServiceImpl, SecretServiceImpl, TaskServiceImpl
from engine.control_plane.common import ControlPlaneContext, OwnerOnly
from engine.control_plane.data_proxy import ClusterServiceImpl, DataProxyServiceImpl
from engine.control_plane.run_service import RunServiceImpl
from engine.control_plane.trigger_service import TriggerServiceImpl
from engine.control_plane.upload_route import UPLOAD_PREFIX, UploadRoute
from engine.http_gate import BoundedGzip, harden_connect_app
from engine.names import InvalidNameError, check_run_name

RUN_PAGE_PREFIX = "/v2"


class ControlPlane:
    def __init__(self, client: LocalClient, authority: Authority, data_dir: Path, max_body_bytes: int, files=None):
        self.context = ControlPlaneContext(client, authority, Path(data_dir), asyncio.Event(), files=files)
        self.max_body_bytes = max_body_bytes

    def set_plain_url(self, url: str) -> None:
        self.context.plain_url = url.rstrip("/")

    def close(self) -> None:
        self.context.closing.set()  # end the watch and tail streams so the server can stop

    def apps(self) -> list:
        options = {"read_max_bytes": self.max_body_bytes, "compressions": [BoundedGzip(self.max_body_bytes)]}
        ctx = self.context
        triggers = TriggerServiceImpl(ctx)
        services = [
            (RunServiceASGIApplication, RunServiceImpl(ctx)),
            (DataProxyServiceASGIApplication, DataProxyServiceImpl(ctx)),
            (ClusterServiceASGIApplication, ClusterServiceImpl()),
            (TaskServiceASGIApplication, TaskServiceImpl(ctx, triggers.deploy)),
            (TriggerServiceASGIApplication, triggers),
            (ProjectServiceASGIApplication, ProjectServiceImpl(ctx)),
            (IdentityServiceASGIApplication, IdentityServiceImpl()),
            (SecretServiceASGIApplication, SecretServiceImpl(ctx)),
        ]
        return [disconnect_aware(harden_connect_app(app(OwnerOnly(service), **options))) for app, service in services]

    def routes(self) -> list:
        """(path prefix, ASGI app) of the routes that check who asks themselves."""
        return [(UPLOAD_PREFIX, UploadRoute(self.context.authority, self.context.data_dir, files=self.context.files)),
                (RUN_PAGE_PREFIX, run_page)]


async def run_page(scope, receive, send) -> None:
    """What the run URL the CLI prints opens: where to look at the run (no data of it: anyone may open it)."""
    parts = scope["path"].strip("/").split("/")  # v2/domain/D/project/P/runs/NAME
    name = parts[6] if len(parts) == 7 and parts[5] == "runs" else ""
    try:
        check_run_name(name)
    except InvalidNameError:
        name = ""  # not a run's name: nothing of it is echoed
    title = f"Run {name}" if name else "TaskDeck"
    body = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1><p>This engine has no web console. Watch the run in the terminal:</p>"
            f"<pre>taskdeck                      # the console; / then {html.escape(name or 'RUN')}\n"
            f"taskdeck get actions {html.escape(name or 'RUN')}\n"
            f"flyte get logs {html.escape(name or 'RUN')}</pre>").encode()
    await send({"type": "http.response.start", "status": 200 if name else 404,
                "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            (b"content-security-policy", b"default-src 'none'")]})
    await send({"type": "http.response.body", "body": body})
