"""Our noise probe streams from `sendspin serve` 9.0.0 `--workers 2` (issue 10, part 5).

sendspin 9.0.0 is Noise only. With `--workers N` its coordinator decodes the source once
and hands PCM to N worker processes, each a standalone aiosendspin 10.2.1 server on a port
of its own (PORT, PORT+1, ...): no SO_REUSEPORT, no redirect; its banner says to put a
reverse proxy in front. Each worker makes its own identity (`Identity.generate()`) and
approves every client for unpaired playback (its `PartyPairingStore`), so the probe needs
nothing but the Sentinel PSK, and one probe per worker port spreads the listeners.

Runs inside a loopback-only network namespace (`unshare -n`, as bench/multiworker.py): the
ports are fixed and the workers try mDNS. Skipped, saying why, unless
SENDSPIN_SENDSPIN9_PYTHON names the interpreter of a venv with sendspin==9.0.0 (Python >=
3.12; its `sendspin` executable beside it) and we are root with `unshare` and `ip`.

The source is a watermark FLAC in 4608-frame blocks (96 000 µs each), made by
bench/_mw_sources.py with that venv's PyAV: a 48 kHz WAV comes out of PyAV in 4096-frame
packets (85 333.3 µs) and the coordinator truncates each packet's duration to whole µs
when it stamps the next, so a worker drops about one packet in four as overlapping (found
here: gaps of exactly 4096 frames every ~16 000 frames; bench/_mw_sources.py documents the
same for 7.5.0).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from noise_support import venv_python

ROOT = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).parent / "noise_peers" / "sendspin9_workers.py"
SOURCES = ROOT / "bench" / "_mw_sources.py"
ENV = "SENDSPIN_SENDSPIN9_PYTHON"
NS_SETUP = 'ip link set lo up && exec "$0" "$@"'
RATE = 48_000
SECONDS = 4.0


@functools.cache
def _sendspin9() -> tuple[str | None, str]:
    python, why = venv_python(ENV, "sendspin", "9.0.0", "the Python of a venv with sendspin==9.0.0 (Python >= 3.12)")
    if python is not None and not (Path(python).parent / "sendspin").exists():
        return None, f"{ENV}={python}: no `sendspin` executable beside it"
    return python, why


def _requirements() -> str:
    python, why = _sendspin9()
    if python is None:
        pytest.skip(why)
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip: the server runs in a loopback-only network namespace")
    return python


def _run_in_namespace(python: str, tmp_path: Path) -> dict[str, Any]:
    made = subprocess.run([python, str(SOURCES), str(tmp_path / "src"), "30"], capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    flac = json.loads(made.stdout)["flac"]
    cmd = ["unshare", "-n", "sh", "-c", NS_SETUP, sys.executable, str(HELPER),
           str(Path(python).parent / "sendspin"), flac, str(tmp_path), "--workers", "2", "--seconds", str(SECONDS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            start_new_session=True)  # one group: the namespace's every process
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, (out.decode()[-3000:], err.decode()[-3000:])
    return json.loads(out.decode().splitlines()[-1])


def _records(path: str, event: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if r["event"] == event]


def test_two_noise_probes_stream_continuously_from_sendspin_9_with_two_workers(tmp_path: Path) -> None:
    python = _requirements()
    report = _run_in_namespace(python, tmp_path)
    assert len(report["probes"]) == 2 and len(set(report["ports"])) == 2, report
    server_ids = []
    for summary in report["probes"]:
        assert summary["returncode"] == 0 and summary["exit"] == 0, summary
        assert summary["sessions"] == 1, summary
        # continuous: every sample once, in order, for the whole run (its send-ahead adds more)
        assert summary["audio_samples"] >= (SECONDS - 1) * RATE, summary
        assert (summary["gaps"], summary["duplicates"], summary["reordered"]) == (0, 0, 0), summary
        audio = _records(summary["log"], "audio")
        assert not any(r["corrupt"] for r in audio), summary["log"]
        (hs,) = _records(summary["log"], "noise_handshake")
        assert hs["psk_category"] == "sn", hs  # unpaired access under the Sentinel PSK
        server_ids.append(hs["server_id"])
    # one probe per worker: the coordinator saw each connect to a different worker
    workers = {w for cid, w in report["connected"]}
    probe_ids = {s["client_id"] for s in report["probes"]}
    assert workers == {0, 1} and {cid for cid, _ in report["connected"]} == probe_ids, report["connected"]
    # each worker presents a key of its own: a client that pins one cannot move to the other
    assert len(set(server_ids)) == 2, server_ids
    print(f"sendspin 9.0.0 --workers 2: {[s['audio_samples'] for s in report['probes']]} samples, "
          f"{[s['audio_chunks'] for s in report['probes']]} chunks, 0 gaps; server stopped "
          f"with {report['server_exit']}", file=sys.stderr)
