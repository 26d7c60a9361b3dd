"""The event log's writer (harness/protocol/eventlog.py) under a full kernel buffer, a
failing disk and a kill: nothing is lost silently, and every emitted record is on disk."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from harness.protocol import EventLog
from harness.protocol.eventlog import SLOW_WRITE_US

PIPE_NEARLY_FULL = 60 * 1024  # of Linux's default 64 KiB (100-byte lines fill 64000 bytes of it)
PIPE_FILLER = 200 * 1024


def _unread(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "LOG": str(tmp_path / "p.jsonl")})


def test_every_record_emitted_is_on_disk_when_the_process_is_killed(tmp_path: Path) -> None:
    done = _run("import os, signal\n"
                "from harness.protocol import EventLog\n"
                "log = EventLog(os.environ['LOG'], 'probe')\n"
                "for i in range(500):\n"
                "    log.emit('send', type=f'm{i}')\n"
                "os.kill(os.getpid(), signal.SIGKILL)\n", tmp_path)
    assert done.returncode == -signal.SIGKILL, done.stderr
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records if r["event"] == "send"] == [f"m{i}" for i in range(500)]
    assert {r["event"] for r in records} <= {"send", "log_slow_write"}  # a busy machine may slow a write


def test_a_write_blocked_by_a_full_kernel_buffer_waits_and_is_reported(tmp_path: Path) -> None:
    # a FIFO is a kernel buffer we can fill
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(reader, True)
    received = bytearray()

    def drain() -> None:
        # once the pipe is nearly full the writer blocks: keep it so for 200 ms, then read all
        deadline = time.monotonic() + 30
        while _unread(reader) < PIPE_NEARLY_FULL and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.2)
        while chunk := os.read(reader, 65536):
            received.extend(chunk)

    thread = threading.Thread(target=drain)
    thread.start()
    log = EventLog(fifo, "harness")
    n = 0
    while n * 100 < PIPE_FILLER:
        log.emit("send", type="x" * 60, client_transmitted=n)
        n += 1
    log.close()
    thread.join(10)
    os.close(reader)
    records = [json.loads(line) for line in received.decode().splitlines()]
    sends = [r["client_transmitted"] for r in records if r["event"] == "send"]
    assert sends == list(range(n)), "every record arrives, in order"
    slow = [r for r in records if r["event"] == "log_slow_write"]
    assert slow and max(r["write_us"] for r in slow) > SLOW_WRITE_US, slow
    assert all(r["bytes"] > 60 for r in slow)


def test_records_that_cannot_be_written_are_counted_and_reported(tmp_path: Path) -> None:
    # RLIMIT_FSIZE: the kernel refuses writes past 1000 bytes (EFBIG), as on a full disk
    done = _run("import os, resource, signal\n"
                "from harness.protocol import EventLog, eventlog\n"
                "eventlog.SLOW_WRITE_US = 10**12  # only the refused writes here, however busy the machine\n"
                "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                "log = EventLog(os.environ['LOG'], 'probe')\n"
                "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
                "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))\n"
                "for i in range(40):\n"
                "    log.emit('send', type=f'm{i}')\n"
                "resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))\n"
                "log.emit('send', type='after')\n"
                "log.close()\n", tmp_path)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "p.jsonl"
    assert f"event log {path}: File too large; records are being lost" in done.stderr
    assert done.stderr.count("records are being lost") == 1, "reported once, not per record"
    lines = path.read_text().splitlines()
    whole = [json.loads(line) for line in lines[:-3]]
    torn, gap, after = lines[-3], json.loads(lines[-2]), json.loads(lines[-1])
    written = len(whole)
    assert [r["type"] for r in whole] == [f"m{i}" for i in range(written)]
    assert torn.startswith('{"t_us":') and not torn.endswith("}"), "the record cut at the limit"
    assert (gap["event"], gap["lost"], gap["error"]) == ("log_gap", 40 - written, "File too large")
    assert after["type"] == "after"
