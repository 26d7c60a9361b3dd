"""bench/noise_proxy.py's smoke run: the benchmark still reaches every path.

Real processes on 127.0.0.1: our reference server (noise only), the proxy opaque and
terminating, noise listeners and the round-trip client. It judges no figure (speed is
for bench/); it checks that every path streamed without a gap, that the proxy held
every connection in the mode the path names, and that nothing was left behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_smoke_run_reaches_every_path_with_the_mode_it_names() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "noise_proxy.py"), "--servers", "ours", "--levels", "2",
         "--seconds", "0.5", "--settle", "0", "--rtt", "10", "--sample", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for path in ("direct", "opaque", "terminated"):
        assert re.search(rf"^\| ours \| 2 \| {path} \| yes \|", out, re.M), out
    assert "'noise-opaque': 3}" in out and "'noise-terminated': 3}" in out, out  # 2 listeners + the round-trip client
    cpu = re.search(r"^\| ours \| 2 \| terminated \| yes \| (\d+\.\d+) \|", out, re.M)
    assert cpu is not None and float(cpu.group(1)) > 0, out
    assert "leftover processes: none" in out, out
