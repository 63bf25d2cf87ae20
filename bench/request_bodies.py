"""What a request costs the engine: refusing oversized bodies, and accepting bodies up to the cap.

A headless engine (a subprocess, default 8 MiB cap) is sent:
  * oversized bodies of 16, 64 and 128 MiB, declared with Content-Length (refused from the header) and
    streamed without one (refused once the cap is passed while reading): the cost should be flat;
  * accepted ``POST /runs`` bodies of 1, 2, 4 and 7.5 MiB (a run whose input is a long string): the
    cost should grow linearly with the size (it grew with the square before the read was fixed).
For each, the median over ``--repeat`` tries of the wall time to the answer and of the engine's own CPU
time (from /proc/PID/task/*/schedstat), so the client's sending is not counted as the engine's work.

    python bench/request_bodies.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from flyteidl2.core import literals_pb2  # noqa: E402
from flyteidl2.task import common_pb2  # noqa: E402

from helpers import process_cpu_seconds, sleep_spec  # noqa: E402

MiB = 1024 * 1024


def send(port: int, token: str, body_size: int, *, declared: bool, body: bytes | None = None) -> int:
    """POST /taskdeck/v1/runs over a raw socket (so the body can be streamed); returns the status."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        head = (f"POST /taskdeck/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\n")
        head += f"Content-Length: {body_size}\r\n" if declared else "Transfer-Encoding: chunked\r\n"
        sock.sendall((head + "\r\n").encode())
        chunk = b" " * (256 * 1024)
        sent = 0
        sock.settimeout(60)
        try:
            while sent < body_size:
                piece = body[sent:sent + len(chunk)] if body is not None else chunk[:body_size - sent]
                sock.sendall(piece if declared else b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            if not declared:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we finished: what we measure
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return int(answer.split(b" ", 2)[1]) if answer else 0
    finally:
        sock.close()


def accepted_body(size: int) -> bytes:
    """A valid ``POST /runs`` JSON body of about ``size`` bytes (a sleep task with a long string input)."""
    filler = "x" * int(size * 0.74)  # base64 grows it by 4/3
    inputs = common_pb2.Inputs(literals=[common_pb2.NamedLiteral(name="note", value=literals_pb2.Literal(
        scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(string_value=filler))))])
    return json.dumps({"taskSpec": base64.b64encode(sleep_spec().SerializeToString()).decode(),
                       "inputs": base64.b64encode(inputs.SerializeToString()).decode()}).encode()


def measure(pid: int, fn, repeat: int) -> tuple[float, float, int]:
    walls, cpus, status = [], [], 0
    for _ in range(repeat):
        cpu, wall = process_cpu_seconds(pid), time.perf_counter()
        status = fn()
        walls.append(time.perf_counter() - wall)
        time.sleep(0.05)  # let the engine finish its side before reading its CPU time
        cpus.append(process_cpu_seconds(pid) - cpu)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000, status


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        engine = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data), "--headless"],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not (data / "engine.json").exists():
                time.sleep(0.05)
            port = int(json.loads((data / "engine.json").read_text())["url"].rsplit(":", 1)[1])
            token = (data / "token").read_text().strip()
            print("body                         status  wall_ms  engine_cpu_ms")
            for declared in (True, False):
                for size in (16 * MiB, 64 * MiB, 128 * MiB):
                    wall, cpu, status = measure(engine.pid, lambda: send(port, token, size, declared=declared),
                                                args.repeat)
                    label = f"refuse {size // MiB} MiB {'declared' if declared else 'streamed'}"
                    print(f"{label:<28} {status:>6}  {wall:7.1f}  {cpu:13.1f}", flush=True)
            for size in (1 * MiB, 2 * MiB, 4 * MiB, int(7.5 * MiB)):
                body = accepted_body(size)
                wall, cpu, status = measure(
                    engine.pid, lambda: send(port, token, len(body), declared=True, body=body), args.repeat)
                print(f"{'accept ' + f'{len(body) / MiB:.1f} MiB':<28} {status:>6}  {wall:7.1f}  {cpu:13.1f}",
                      flush=True)
        finally:
            engine.terminate()
            engine.wait(timeout=30)


if __name__ == "__main__":
    main()
