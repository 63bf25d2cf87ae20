"""Flyte's DataProxyService and ClusterService: where uploads go, run inputs, action data and logs.

Uploads land in the engine's upload store through a signed PUT URL on its own plain-HTTP server
(``upload_route.py``); ``native_url`` is the stored file's plain absolute path, which task processes
read (the SDK's ``File.open`` breaks on ``file://``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
from collections.abc import AsyncIterator

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.cluster import payload_pb2 as cluster_payload_pb2
from flyteidl2.cluster.service_connect import ClusterService
from flyteidl2.dataproxy import dataproxy_service_pb2 as dp
from flyteidl2.dataproxy.dataproxy_service_connect import DataProxyService
from flyteidl2.logs.dataplane import payload_pb2 as log_pb2
from flyteidl2.common import run_pb2

from engine.control_plane import messages
from engine.control_plane.common import ContextService, project_of, translate_errors
from engine.control_plane.upload_route import UPLOAD_PREFIX, check_upload_name
from engine.phases import ActionPhase

DEFAULT_EXPIRY = dt.timedelta(hours=1)
MAX_EXPIRY = dt.timedelta(days=7)
TAIL_CHUNK = 256 * 1024
TAIL_POLL_SECONDS = 0.25


class ClusterServiceImpl(ClusterService):
    async def select_cluster(self, request, ctx):
        return cluster_payload_pb2.SelectClusterResponse()  # empty: this endpoint is the cluster


class DataProxyServiceImpl(ContextService, DataProxyService):
    async def create_upload_location(self, request, ctx):
        with translate_errors():
            await self.services.projects.check(request.project, request.domain)
        if len(request.content_md5) != 16:
            raise ConnectError(Code.INVALID_ARGUMENT, "content_md5 must be the 16-byte MD5 digest of the file")
        md5 = request.content_md5.hex()
        folder = request.filename_root or md5
        for part in (folder, *request.filename.split("/")):
            check_upload_name(part)
        expires_in = request.expires_in.ToTimedelta() if request.HasField("expires_in") else DEFAULT_EXPIRY
        expires_in = min(max(expires_in, dt.timedelta(seconds=1)), MAX_EXPIRY)
        path = f"{UPLOAD_PREFIX}/{request.project}/{request.domain}/{folder}/{request.filename}"
        signed = self.ctx.authority.sign_path(path, expires_in.total_seconds(), bound=md5)
        response = dp.CreateUploadLocationResponse(
            signed_url=f"{self.ctx.plain_url}{signed}",
            native_url=self.ctx.upload_uri(request.project, request.domain, folder, request.filename))
        response.expires_at.FromDatetime(dt.datetime.now(dt.timezone.utc) + expires_in)
        return response

    async def upload_inputs(self, request, ctx):
        project, domain = project_of(request)
        with translate_errors():
            await self.services.projects.check(project, domain)
        data = request.inputs.SerializeToString(deterministic=True)
        digest = hashlib.sha256(data).hexdigest()
        path = self.ctx.inputs_path(project, domain, digest)

        def store() -> None:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{os.getpid()}-{id(data)}.tmp")
                tmp.write_bytes(data)
                tmp.replace(path)

        try:
            await asyncio.to_thread(store)
        except OSError as exc:
            raise ConnectError(Code.UNAVAILABLE, f"cannot store the inputs: {exc.strerror or exc}") from None
        return dp.UploadInputsResponse(offloaded_input_data=run_pb2.OffloadedInputData(uri=str(path),
                                                                                       inputs_hash=digest))

    async def create_download_link(self, request, ctx):
        raise ConnectError(Code.UNIMPLEMENTED, "download links are not served: on this machine the code bundle "
                                               "is read from its path")

    async def get_action_data(self, request, ctx):
        with translate_errors():
            record = await self.ctx.action_record(request.action_id)
            inputs, outputs, inputs_uri, outputs_uri = await self.ctx.runs.action_data(record.run_name, record.name)
        return dp.GetActionDataResponse(inputs=inputs, outputs=outputs, inputs_uri=inputs_uri, outputs_uri=outputs_uri)

    def tail_logs(self, request, ctx) -> AsyncIterator:
        return self._tail(request)

    async def _tail(self, request) -> AsyncIterator:
        """The attempt's log from its start, then what it prints, ending once the action has ended and the
        log is read to its end. Secrets are masked (the client interface's read)."""
        with translate_errors():
            record = await self.ctx.action_record(request.action_id)
        attempt = request.attempt or max(record.attempts, 1)
        offset = 0
        while True:
            with translate_errors():
                chunk = await self.ctx.client.read_log(record.run_name, record.name, attempt, offset, TAIL_CHUNK)
            if chunk.lines:
                lines = []
                for line in chunk.lines:
                    entry = log_pb2.LogLine(message=line.text + "\n", originator=messages.log_kind(line.text))
                    if (stamp := messages.timestamp(line.time)) is not None:
                        entry.timestamp.CopyFrom(stamp)
                    lines.append(entry)
                yield dp.TailLogsResponse(logs=[dp.TailLogsResponse.Logs(lines=lines)])
            offset = chunk.next_offset if chunk.exists else offset
            if chunk.lines and chunk.next_offset < chunk.size:
                continue  # more to read now
            if ActionPhase(record.phase).is_terminal or self.ctx.closing.is_set():
                return
            await asyncio.sleep(TAIL_POLL_SECONDS)
            record = await self.ctx.runs.find_action(record.run_name, record.name) or record
            if attempt < record.attempts and not request.attempt:
                return  # a retry started: its log is another stream

