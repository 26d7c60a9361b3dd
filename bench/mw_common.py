"""bench/multiworker.py, shared part: constants, logging, the record of process groups.

Every process the run starts leads its own process group (harness/topology.py);
`GROUPS` knows them all, and each group is also written to WORKDIR/pgids.txt so the
outer process (mw_setup.run_outer) can SIGKILL them if the inner one dies.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from harness.topology import ChildSet, cmdline, kill_group

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV = BENCH / ".venv-sendspin"
SENDSPIN_VERSION = "7.5.0"
LOAD = BENCH / "_mw_load.py"
SOURCES = BENCH / "_mw_sources.py"
SOURCE_SECONDS = 300
NS_SETUP = ("ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo && "
            'exec "$0" "$@"')
NCPU = os.cpu_count() or 1
GOAL_CPU_PER_LS = 0.0005
GOAL_FACTOR = 4.0
PER_LOAD_PROC = 800          # listeners per load-generator process
LOAD_SATURATED = 0.9         # cores of one load process: it cannot keep up
MACHINE_SATURATED = 0.95     # share of all cores busy
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def now_us() -> int:
    return time.monotonic_ns() // 1000


def venv_python() -> Path:
    return VENV / "bin" / "python"


def _record_pgid(pgid: int) -> None:
    with open(Path(os.environ["MW_WORKDIR"]) / "pgids.txt", "a") as f:
        f.write(f"{pgid}\n")


# every child of the inner run (servers, load generators); kill_all / pgids at the end whatever happens
GROUPS = ChildSet(on_spawn=_record_pgid)


def end_run(results: dict) -> None:
    """Every process group of the run killed and reaped; what is left of them and the run
    time go into `results` (also bench/noise_fanout.py's)."""
    for pgid in GROUPS.pgids:
        kill_group(pgid)
    for child in GROUPS.items:
        child.reap(5.0)
    time.sleep(0.3)
    left = [f"{p} {cmdline(p)[:60]}" for p in GROUPS.leftovers()]
    results["leftovers"] = left or "none"
    results["runtime_s"] = round(time.monotonic() - T0, 1)
