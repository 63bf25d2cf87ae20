"""The process a local task runs under: it waits for the engine's go, runs the task, stamps its output.

    python -I -S launcher.py LOG -- ARGV...

1. It reads a line from stdin and runs nothing unless that line is ``go``: the engine writes it only
   after it has recorded the launch, so a task never runs unrecorded (an engine killed before that
   closes the pipe, and the launcher exits 111 having run nothing). ``go {JSON}`` also carries the
   secrets the task asks for as files: they are mounted for it first (``secret_mounts.py``; exit 112,
   said in the log, when they cannot be).
2. It starts ARGV with stdin from /dev/null and stdout and stderr into a pipe, and appends each line the
   task writes to LOG, prefixed with the time it was read (UTC, milliseconds): the log carries when each
   line was written, whoever reads it later, and the task keeps its log when the engine dies.
3. It exits with the task's exit code (128 + N when a signal N ended it). SIGTERM and SIGINT are left to
   the task (the launcher drains what remains), so aborting the process group stops the task first.

It imports nothing but the standard library and starts in ~10 ms (``-I -S``).
"""

from __future__ import annotations

import io
import os
import select
import signal
import sys
import time

REFUSED_EXIT = 111
SECRET_MOUNT_FAILED_EXIT = 112
STAMP_WIDTH = 24  # "2026-12-01T18:46:24.641Z"
MAX_LINE = 64 * 1024  # a longer unbroken line is cut here
DRAIN_SECONDS = 0.5  # after the task ends, output its children still write is read this long


def stamp(now: float) -> bytes:
    seconds = int(now)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((now - seconds) * 1000):03d}Z "
            ).encode()


def stamped(text: str, now: float) -> bytes:
    """``text`` (one or more lines) as a log has it: each line prefixed with ``stamp(now)``."""
    prefix = stamp(now)
    return b"".join(prefix + line.encode() + b"\n" for line in text.splitlines())


class _Unlocked:
    """The lock of a stream with one writer (the launcher's loop)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


class StampedLines(io.RawIOBase):
    """A writable stream onto ``fd`` that writes through at once, each line starting with its stamp and
    cut at MAX_LINE (a reader takes whole lines only): the launcher feeds it what the task writes into
    its pipe; a forked task's ``sys.stdout`` and ``sys.stderr`` share one (as the launcher's one pipe is,
    with ``lock`` taken: the SDK's threads write as the task does), so a kill loses nothing it wrote."""

    def __init__(self, fd: int, lock=None):
        super().__init__()
        self.fd = fd
        self.lock = lock or _Unlocked()
        self.at_line_start = True
        self.line_length = 0

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, data) -> int:
        data = bytes(data)
        if not data:
            return 0
        prefix = stamp(time.time())
        pieces = data.split(b"\n")
        with self.lock:
            out = []
            for index, piece in enumerate(pieces):
                while piece:
                    if self.line_length >= MAX_LINE:  # a longer unbroken line goes on in a line of its own
                        out.append(b"\n")
                        self.at_line_start, self.line_length = True, 0
                    if self.at_line_start:
                        out.append(prefix)
                        self.at_line_start = False
                    room = MAX_LINE - self.line_length
                    out.append(piece[:room])
                    self.line_length += len(piece[:room])
                    piece = piece[room:]
                if index < len(pieces) - 1:  # a newline followed this piece
                    if self.at_line_start:
                        out.append(prefix)  # an empty line
                    out.append(b"\n")
                    self.at_line_start, self.line_length = True, 0
            out = b"".join(out)
            while out:
                out = out[os.write(self.fd, out):]
        return len(data)

    def finish(self) -> None:
        """End the last line, if it has no newline (at exit: whatever is appended next starts a line)."""
        with self.lock:
            if not self.at_line_start:
                os.write(self.fd, b"\n")
                self.at_line_start, self.line_length = True, 0


def stamped_text_stream(raw: StampedLines, like) -> io.TextIOWrapper:
    """A text stream as ``like`` (``sys.stdout``, ``sys.stderr``) encodes, writing through to ``raw`` (as
    ``PYTHONUNBUFFERED``, which the engine sets for every task, has Python's own streams do)."""
    return io.TextIOWrapper(raw, encoding=getattr(like, "encoding", None) or "utf-8",
                            errors=getattr(like, "errors", None) or "backslashreplace", write_through=True)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: launcher.py LOG -- ARGV...\n")
        return 2
    log_path, command = argv[1], argv[3:]
    go, _, payload = sys.stdin.buffer.readline().strip().partition(b" ")
    if go != b"go":
        return REFUSED_EXIT
    if payload:
        import json

        failed = mount_secret_files(json.loads(payload).get("secretFiles"), log_path)
        if failed is not None:
            return failed

    def run_command() -> None:
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            os.write(2, f"[taskdeck] cannot run {command[0]}: {exc.strerror or exc}\n".encode())

    return supervise(log_path, run_command)


def mount_secret_files(request: dict | None, log_path: str) -> int | None:
    """Mount the secrets ``request`` (``{"files": {path: value}, "scratch": dir}``) names for this process and
    the task it starts; SECRET_MOUNT_FAILED_EXIT, said in the log, when they cannot be mounted."""
    if not request:
        return None
    import importlib.util

    try:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "secret_mounts.py")
        spec = importlib.util.spec_from_file_location("_taskdeck_secret_mounts", path)
        mounts = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mounts)
        mounts.mount_secret_files(request["files"], request["scratch"])
        return None
    except (OSError, KeyError, TypeError, AttributeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        with _suppress():
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, stamped(f"[taskdeck] cannot mount the task's secret files at /etc/flyte/secrets: "
                                     f"{reason}", time.time()))
            finally:
                os.close(fd)
        return SECRET_MOUNT_FAILED_EXIT


def supervise(log_path: str, run_task) -> int:
    """Fork the task (``run_task`` runs in the child, with stdin from /dev/null and its output into a
    pipe; it should not return), stamp its output into ``log_path``, return its exit code."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the task
        try:
            os.close(read_end)
            os.close(log_fd)
            standard_streams_onto(write_end)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            run_task()
        except BaseException as exc:  # noqa: BLE001 - the child must never return into the caller
            with _suppress():
                os.write(2, f"[taskdeck] cannot start the task: {exc}\n".encode())
        os._exit(127)
    os.close(write_end)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # the task decides; we keep its last words
        signal.signal(sig, signal.SIG_IGN)
    stamper = StampedLines(log_fd)
    status = None
    drain_until = None
    while True:
        timeout = 0.5 if drain_until is None else max(drain_until - time.monotonic(), 0)
        readable, _, _ = select.select([read_end], [], [], timeout)
        if readable:
            data = os.read(read_end, 65536)
            if not data:
                break  # every writer closed: the task and its children are done with it
            stamper.write(data)
        if status is None:
            done, status_code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = status_code
                drain_until = time.monotonic() + DRAIN_SECONDS
        elif not readable and time.monotonic() >= drain_until:
            break  # a child of the task keeps the pipe open: stop waiting for it
    stamper.finish()
    os.close(log_fd)
    os.close(read_end)
    if status is None:
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def standard_streams_onto(fd: int) -> None:
    """In a task about to run: stdin from /dev/null, stdout and stderr onto ``fd`` (which is closed)."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    for spare in {fd, devnull} - {0, 1, 2}:
        os.close(spare)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return True


if __name__ == "__main__":
    sys.exit(main(sys.argv))
