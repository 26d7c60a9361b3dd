"""worker_crash: an upstream worker dies (SIGKILL), hangs (SIGSTOP), or loses every flow (RST)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from typing import Any

from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, ProxyServices
from .params import FaultSpecError, Param


class WorkerCrash(Fault):
    """Crash one upstream worker `after_s` seconds after the fault is added, once.

    `action: kill` sends SIGKILL and `stop` SIGSTOP to the worker's process, found
    through the pid the orchestration registered for that upstream
    (`PATCH /upstreams/{i} {"pid": N}`, or `sendspin-proxy upstream pid I N`). `reset`
    is the pure-network variant: the process is untouched and every live connection
    routed to that upstream gets a TCP RST on both sides, as if its host vanished.
    `upstream` picks the worker by index; null picks one at random (seeded) among live
    upstreams with a pid (kill, stop) or with connections (reset).

    What the proxy then sees of the worker (RST, EOF, silence) is relayed as it
    happens; the balancer marks a killed worker down by itself (refused connects). A
    stopped worker still accepts TCP in its kernel backlog: noticing it is the
    coordinator's job. Removing a `stop` fault, or its `duration` running out, sends
    SIGCONT (`resume: true`) unless the process is gone; retiring by `count` does not."""

    kind = "worker_crash"
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: ""}  # noqa: RUF012 - class-level declaration, never mutated
    uses_selector = False
    default_direction = "both"
    allowed_directions = ("both",)  # it acts on a process / an upstream, not on a direction
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "action": Param(str, "kill", choices=("kill", "stop", "reset"),
                        help="kill: SIGKILL; stop: SIGSTOP; reset: RST every connection of that upstream"),
        "upstream": Param(int, None, min=0, nullable=True, help="upstream index; null = a random eligible one"),
        "after_s": Param(float, 0.0, min=0.0, help="delay after the fault is added"),
        "seed": Param(int, 0, help="random choice of the upstream"),
        "resume": Param(bool, True, help="stop: SIGCONT when the fault is removed"),
    }
    action: str
    upstream: int | None
    after_s: float
    seed: int
    resume: bool

    def validate(self) -> None:
        if self.connections is not None:
            raise FaultSpecError("worker_crash: takes no 'connections' (it acts on a worker; pick it with 'upstream')")

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        # proxy-wide state of this one fault object (not per connection)
        self._timer: asyncio.TimerHandle | None = None
        self._stopped: int | None = None  # pid we sent SIGSTOP to

    def on_added(self, proxy: ProxyServices) -> None:
        ups = proxy.upstreams
        if self.upstream is not None:  # fail at once, so the API answers 400, not later in the log
            if self.upstream >= len(ups):
                raise FaultSpecError(f"worker_crash: parameter 'upstream' {self.upstream} is not an upstream "
                                     f"(0..{len(ups) - 1})")
            if self.action != "reset":
                self._check_pid(ups[self.upstream].pid, self.upstream)
        elif self.action != "reset" and not any(u.pid for u in ups):
            raise FaultSpecError("worker_crash: no upstream has a registered pid (PATCH /upstreams/{i} "
                                 '{"pid": N}); action "reset" needs none')
        self._timer = asyncio.get_running_loop().call_later(self.after_s, self._fire, proxy)

    @staticmethod
    def _check_pid(pid: int | None, index: int) -> None:
        if pid is None:
            raise FaultSpecError(f"worker_crash: upstream {index} has no registered pid "
                                 f'(PATCH /upstreams/{index} {{"pid": N}})')
        if pid <= 1 or pid == os.getpid():
            raise FaultSpecError(f"worker_crash: refusing to signal pid {pid} (init or the proxy itself)")

    def _choose(self, proxy: ProxyServices) -> Any:
        ups = proxy.upstreams
        if self.upstream is not None:
            return ups[self.upstream]
        if self.action == "reset":
            busy = {c.upstream for c in proxy.connections() if not c.finished}
            candidates = [u for u in ups if u.index in busy] or [u for u in ups if u.alive]
        else:
            candidates = [u for u in ups if u.pid and u.alive]
        if not candidates:
            return None
        return random.Random(self.seed).choice(sorted(candidates, key=lambda u: u.index))

    def _fire(self, proxy: ProxyServices) -> None:
        self._timer = None
        if not self.active:
            return
        u = self._choose(proxy)
        if u is None:
            self.record(None, action=self.action, upstream=None, error="no eligible upstream")
            return
        fields: dict[str, Any] = {"action": self.action, "upstream": u.index, "url": u.url, "pid": u.pid}
        if self.action == "reset":
            conns = [c for c in proxy.connections() if c.upstream == u.index and not c.finished]
            for c in conns:
                c.abort("server")
                c.abort("client")
            fields["flows"] = [c.session for c in conns]
        else:
            sig = signal.SIGKILL if self.action == "kill" else signal.SIGSTOP
            try:
                self._check_pid(u.pid, u.index)
                os.kill(u.pid, sig)
                if self.action == "stop":
                    self._stopped = u.pid
            except (FaultSpecError, OSError) as e:  # gone already, not ours to signal: say so
                fields["error"] = str(e)
        self.record(None, **fields)

    def on_removed(self, proxy: ProxyServices) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pid, self._stopped = self._stopped, None
        # count=1 retires the fault right after it fired: that must not undo the stop
        if pid is not None and self.resume and self.retired != "count":
            with contextlib.suppress(OSError):  # it may have been killed meanwhile (hang detection)
                os.kill(pid, signal.SIGCONT)
                if self.events is not None:
                    self.events.emit("fault_undo", fault=self.name, type=self.kind, action="SIGCONT", pid=pid)
