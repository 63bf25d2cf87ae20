"""A real S3 API server on localhost for the object-store tests: moto's server mode (``moto_server``), in its
own process, with a fresh bucket. The engine and its task pods reach it through the flyte SDK's storage
layer with the SDK's variables (FLYTE_AWS_ENDPOINT, FLYTE_AWS_ACCESS_KEY_ID, FLYTE_AWS_SECRET_ACCESS_KEY)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ACCESS_KEY = "taskdeck-test"
SECRET_KEY = "taskdeck-test-secret-" + "5e1f" * 4  # moto accepts any pair; the tests look for this one


def moto_server_command() -> list[str] | None:
    found = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    return [found] if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    def __init__(self, log_dir: Path):
        command = moto_server_command()
        if command is None:
            raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.buckets_made: list[str] = []  # buckets the tests made, for unique names
        self._log = open(Path(log_dir) / "moto.log", "ab")
        self.process = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto_server did not start (see {log_dir}/moto.log)") from None
                time.sleep(0.1)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def env(self) -> dict[str, str]:
        """What the engine is given to reach it (the SDK's own variable names)."""
        return {"FLYTE_AWS_ENDPOINT": self.url, "FLYTE_AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "FLYTE_AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()
