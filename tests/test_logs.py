"""Task logs carry when each line was written (stamped as the task wrote it, not when someone read it)."""

from __future__ import annotations

import asyncio
import os
import time

from engine.client.local import LocalClient
from engine.engine import Engine, EngineConfig
from engine.logs import parse_line
from engine.phases import ActionPhase
from helpers import shell_spec


async def test_each_line_carries_the_time_the_task_wrote_it_however_late_it_is_read(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=0.2))
    await engine.start()
    try:
        started = time.time()
        run = await engine.runs.create_run(shell_spec("echo first; sleep 1.5; echo second; printf 'no newline'"))
        assert (await engine.runs.wait_for_run(run.run_name, timeout=30)).phase == ActionPhase.SUCCEEDED
        await asyncio.sleep(2)  # read well after the task ended: the times must not be "now"
        client = LocalClient(engine.services)
        chunk = await client.read_log(run.run_name, "a0", 1)
        lines = {line.text: line.time for line in chunk.lines}
        assert lines["first"] is not None and lines["second"] is not None
        assert 1.3 <= lines["second"] - lines["first"] <= 3.0
        assert started - 1 <= lines["first"] <= started + 10
        assert time.time() - lines["second"] >= 1.9  # not the time it was read
        assert "no newline" in lines  # a last line without its newline is kept
        assert all(text.startswith("[taskdeck]") for text in list(lines)[:2])  # the engine's lines are stamped too
        tail = await client.read_log(run.run_name, "a0", 1, offset=-40)
        assert tail.lines and tail.lines[-1].text == "no newline" and tail.offset > 0  # a tail from a line start
        follow = await client.read_log(run.run_name, "a0", 1, offset=chunk.next_offset)
        assert follow.lines == () and follow.next_offset == chunk.next_offset == chunk.size
    finally:
        await engine.stop()


def test_a_line_without_a_stamp_reads_as_it_is():
    assert parse_line("plain text").time is None and parse_line("plain text").text == "plain text"
    stamped = parse_line("2026-12-01T18:46:24.641Z hello world")
    assert stamped.text == "hello world" and abs(stamped.time - 1796150784.641) < 1e-3
    assert parse_line("2026-13-01T18:46:24.641Z not a date").time is None


def test_a_forked_tasks_streams_stamp_every_line_once_whichever_thread_writes(tmp_path):
    """A forked task's sys.stdout and sys.stderr share one stamping stream (``launcher.StampedLines``):
    lines three threads write at once (one write each: print's text and newline are two, which threads
    interleave on any stream) each arrive whole, with one stamp; an unfinished last line is ended at exit."""
    import sys
    import threading

    from engine.plugins import launcher

    path = tmp_path / "1.log"
    raw = launcher.StampedLines(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), threading.Lock())
    out, err = launcher.stamped_text_stream(raw, sys.stdout), launcher.stamped_text_stream(raw, sys.stderr)

    def write_lines(stream, tag):
        for i in range(2000):
            stream.write(f"{tag} line {i}\n")

    threads = [threading.Thread(target=write_lines, args=pair) for pair in ((out, "out"), (err, "err"), (out, "more"))]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads switch as often as they can
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    out.write("unfinished")
    raw.finish()
    lines = [parse_line(line) for line in path.read_text().splitlines()]
    assert len(lines) == 6001 and all(line.time is not None for line in lines)
    texts = {line.text for line in lines}
    assert {f"{tag} line {i}" for tag in ("out", "err", "more") for i in range(2000)} <= texts
    assert lines[-1].text == "unfinished"


def test_a_line_longer_than_the_limit_is_cut_into_stamped_lines_whole_or_in_pieces(tmp_path):
    """A reader takes whole lines only, so an unbroken line longer than MAX_LINE goes on in a stamped
    line of its own, whether it arrives in one write or in many; empty lines keep their stamp too."""
    from engine.plugins import launcher

    for pieces in ([b"x" * (2 * launcher.MAX_LINE + 10) + b"\nnext\n\n"],
                   [b"x" * 1024] * (2 * launcher.MAX_LINE // 1024) + [b"x" * 10 + b"\nnext\n", b"\n"]):
        path = tmp_path / f"{len(pieces)}.log"
        raw = launcher.StampedLines(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        for piece in pieces:
            raw.write(piece)
        raw.finish()
        lines = [parse_line(line) for line in path.read_bytes().decode().split("\n")[:-1]]
        assert [len(line.text) for line in lines] == [launcher.MAX_LINE, launcher.MAX_LINE, 10, 4, 0]
        assert all(line.time is not None for line in lines)
