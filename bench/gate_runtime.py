"""Benchmark: how long the client gate's default profile takes on one client.

Runs `pytest scenarios/test_client_gate.py --client-cmd <client>` as an implementer
would, serially (the baseline) and with `-n N` xdist workers, and prints per run:
the wall time (process start to exit, pytest's own start-up included), the verdicts,
and the slowest cases. The ratio is each run's wall time over the serial one. Not a
test: it judges nothing (the verdicts are shown so that a fast run of failing cases
is not mistaken for a win).

    .venv/bin/python bench/gate_runtime.py [--client probe|aiosendspin] [--workers 1 4] [--profile default]
    (or: ./run bench gate_runtime ...)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = {
    "probe": f"{sys.executable} -m harness.probe --url {{url}} --client-id {{client_id}} --name {{name}}",
    "aiosendspin": f"{sys.executable} {ROOT / 'clients/aiosendspin_client.py'} --url {{url}} "
                   "--client-id {client_id} --client-name {name}",
}
RUN_TIMEOUT_S = 30 * 60


def run_gate(client: str, workers: int, profile: str, work: Path) -> tuple[float, dict]:
    report = work / f"report-n{workers}"
    argv = [sys.executable, "-m", "pytest", "scenarios/test_client_gate.py", "-q", "-p", "no:cacheprovider",
            f"--basetemp={work / f'cases-n{workers}'}", "--client-cmd", client, "--report-dir", str(report),
            "--gate-profile", profile]
    if workers > 1:
        argv += ["-n", str(workers)]
    started = time.monotonic()
    subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=RUN_TIMEOUT_S)
    return time.monotonic() - started, json.loads((report / "results.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", choices=sorted(CLIENTS), default="probe")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4], help="xdist workers per run; 1 = serial")
    ap.add_argument("--profile", default="default")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gate-runtime-") as tmp:
        rows = []
        for workers in a.workers:
            seconds, results = run_gate(CLIENTS[a.client], workers, a.profile, Path(tmp))
            rows.append((workers, seconds, results))
        base = rows[0][1]
        print(f"client gate, profile {a.profile}, client {a.client}, {len(rows[0][2]['cases'])} cases")
        print(f"{'workers':>7}  {'wall s':>7}  {'ratio':>5}  verdicts / slowest cases")
        for workers, seconds, results in rows:
            verdicts = ", ".join(f"{n} {v}" for v, n in sorted(Counter(c["verdict"] for c in results["cases"]).items()))
            slowest = ", ".join(f"{c['id']} {c['seconds']:.0f} s" for c in
                                sorted(results["cases"], key=lambda c: -c["seconds"])[:4])
            print(f"{workers:>7}  {seconds:>7.1f}  {seconds / base:>5.2f}  {verdicts} / {slowest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
