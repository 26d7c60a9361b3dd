"""bench/multiworker.py, outer process: installs sendspin and the watermark sources, then
re-runs the benchmark inside a loopback-only network namespace (`unshare -n`) and
makes sure every process group the inner run recorded is gone afterwards."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mw_common import BENCH, NS_SETUP, ROOT, SENDSPIN_VERSION, SOURCE_SECONDS, SOURCES, VENV, log, venv_python

from harness.topology import kill_group, spawn_child


def ensure_sendspin() -> None:
    """bench/.venv-sendspin with sendspin==7.5.0, made with this interpreter."""
    py = venv_python()
    probe = [str(py), "-c", "import importlib.metadata as m; print(m.version('sendspin'))"]
    if py.exists():
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            out = subprocess.run(probe, capture_output=True, text=True, timeout=60)
            if out.returncode == 0 and out.stdout.strip() == SENDSPIN_VERSION:
                return
    log(f"installing sendspin=={SENDSPIN_VERSION} into {VENV.relative_to(ROOT)} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", f"sendspin=={SENDSPIN_VERSION}"], check=True,
                   timeout=1200)
    out = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    if out.stdout.strip() != SENDSPIN_VERSION:
        raise SystemExit(f"multiworker: sendspin {SENDSPIN_VERSION} not importable in {VENV}: {out.stderr}")


def ensure_sources() -> dict[str, str]:
    out = subprocess.run([str(venv_python()), str(SOURCES), str(VENV / "watermark"), str(SOURCE_SECONDS)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"multiworker: could not make the watermark sources:\n{out.stderr}")
    return json.loads(out.stdout)


def run_outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        print("multiworker: needs root, unshare and ip (it runs inside a loopback-only network namespace)",
              file=sys.stderr)
        return 2
    ensure_sendspin()
    sources = ensure_sources()
    own_dir = args.log_dir is None
    work = Path(tempfile.mkdtemp(prefix="multiworker-")) if own_dir else Path(args.log_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "pgids.txt").write_text("")
    (work / "clean").unlink(missing_ok=True)
    env = dict(os.environ, MW_INNER="1", MW_WORKDIR=str(work), MW_WAV=sources["wav"], MW_FLAC=sources["flac"])
    argv = list(sys.argv[1:])
    cmd = ["unshare", "-n", "sh", "-c", NS_SETUP, sys.executable, str(BENCH / "multiworker.py"), *argv]
    hard = 260.0 if args.quick else 660.0

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background (SIGINT ignored)
        signal.signal(sig, interrupted)
    inner = spawn_child("multiworker-inner", cmd, None, env=env, stdin=None)  # own process group
    rc: int | None = None
    try:
        if not inner.exited(hard):
            raise subprocess.TimeoutExpired(cmd, hard)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        print(f"multiworker: stopping the run ({type(exc).__name__})", file=sys.stderr)
        inner.kill_group(signal.SIGTERM)
        if not inner.exited(20):
            inner.kill_group(signal.SIGKILL)
            inner.exited(10)
    finally:
        if not inner.exited():
            inner.kill_group(signal.SIGKILL)
        rc = inner.reap(10)
        if not (work / "clean").exists():  # the inner run did not reap its groups: do it here
            for line in (work / "pgids.txt").read_text().split():
                with contextlib.suppress(ValueError):
                    kill_group(int(line))
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if rc is None else rc
