"""`sendspin serve --workers N` (sendspin 9.0.0, Noise only) with one noise probe per
worker, for tests/test_sendspin9_workers.py. Runs with the project's interpreter INSIDE a
loopback-only network namespace (the test starts it under `unshare -n`), so the server's
fixed ports (PORT, PORT+1, ...) and its mDNS cannot meet anything else on the machine.

    python sendspin9_workers.py SENDSPIN_EXE SOURCE WORKDIR --workers 2 --seconds 4

Starts the server (its own session, HOME=WORKDIR so no user settings apply), waits for
its banner's `Worker i: http://host:port/` lines, runs `python -m harness.probe
--profile noise --once --duration S` against each worker's port at the same time, then
stops the server with SIGINT (the only signal it handles; SIGKILL to its group after
10 s) and prints one JSON line: the ports, each probe's summary and log path, and the
server's `Client X connected to worker N` lines. Exit 0 once the report is printed,
whatever the probes found (the test judges); 1 if the server never got ready.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

READY_TIMEOUT_S = 60.0  # a busy 2-core machine: the workers import aiosendspin and PyAV
BANNER = re.compile(r"Worker (\d+): http://[^:/]+:(\d+)/")
CONNECTED = re.compile(r"Client (\S+) connected to worker (\d+)")


def _stop(server: subprocess.Popen[bytes]) -> int | None:
    """SIGINT to the server's group (it shuts its workers down), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(wait)
            # the coordinator is gone; its workers may still be leaving: SIGKILL the rest
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            return server.returncode
    return server.returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sendspin")
    p.add_argument("source")
    p.add_argument("workdir", type=Path)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--port", type=int, default=8927)
    args = p.parse_args()
    out_path = args.workdir / "server.txt"
    env = dict(os.environ, HOME=str(args.workdir), PYTHONUNBUFFERED="1")
    with open(out_path, "wb") as out:
        server = subprocess.Popen([args.sendspin, "serve", "--workers", str(args.workers), "--port", str(args.port),
                                   "--log-level", "INFO", args.source], stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    probes: list[subprocess.Popen[bytes]] = []
    report: dict[str, object] = {}
    try:
        ports: dict[int, int] = {}
        end = time.monotonic() + READY_TIMEOUT_S
        while len(ports) < args.workers and time.monotonic() < end and server.poll() is None:
            ports = {int(w): int(port) for w, port in BANNER.findall(out_path.read_text(errors="replace"))}
            time.sleep(0.1)
        if len(ports) < args.workers:
            print(json.dumps({"error": f"no banner for {args.workers} workers in {READY_TIMEOUT_S} s",
                              "server_exit": server.poll(),
                              "server_output": out_path.read_text(errors="replace")[-3000:]}))
            return 1
        report["ports"] = [ports[w] for w in sorted(ports)]
        logs = [args.workdir / f"probe-{w}.jsonl" for w in sorted(ports)]
        for w, log in zip(sorted(ports), logs, strict=True):
            probes.append(subprocess.Popen(
                [sys.executable, "-m", "harness.probe", "--url", f"ws://127.0.0.1:{ports[w]}/sendspin",
                 "--profile", "noise", "--once", "--duration", str(args.seconds), "--name", f"probe-w{w}",
                 "--log", str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
        summaries = []
        for proc, log in zip(probes, logs, strict=True):
            out, err = proc.communicate(timeout=args.seconds + 60)
            lines = out.decode(errors="replace").splitlines()
            summary = json.loads(lines[-1]) if lines else {}
            summaries.append({**summary, "returncode": proc.returncode, "stderr": err.decode(errors="replace")[-500:],
                              "log": str(log)})
        report["probes"] = summaries
    finally:
        for proc in probes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        report["server_exit"] = _stop(server)
    text = out_path.read_text(errors="replace")
    report["connected"] = [[cid, int(w)] for cid, w in CONNECTED.findall(text)]
    report["server_output"] = str(out_path)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
