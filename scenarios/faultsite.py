"""Where a scenario's fault is made: by the client itself against the server (`Direct`),
or by `sendspin-proxy` in front of a multi-worker server (`BehindProxy`).

Each scenario family (S02, S04, S05, S06) has one skeleton (setup, fault, checks)
that takes a site; the family's own subclasses say how that fault is made there
(a probe that stops reading vs a `slow_reader` fault, ...). The direct and proxy
tests differ only in their Hypothesis strategies and in the site they pass.

Profiles (`--profile`): every S-scenario takes the `profile` fixture, and its probes
speak that wire revision. The proxy relays noise sessions opaquely (its faults here are
network faults); the variants whose faults act on messages cut uploads, the `_harness`
role's, which noise sessions do not activate: legacy only (`only_in`).
"""

from __future__ import annotations

import pytest

from harness.checkers import Verdict, proxy_fault_applied
from harness.events import Events
from harness.fault_proxy import FaultProxy
from harness.pytest_plugin import SCENARIO_PROFILES
from harness.scenario import Scenario
from harness.topology import ManagedProcess


def only_in(wanted: str, why: str) -> pytest.MarkDecorator:
    """Mark a variant that has a form only in the `wanted` profile: skipped in the others, saying why."""
    others = [p for p in SCENARIO_PROFILES if p != wanted]
    return pytest.mark.skip_profile(*others, reason=f"{wanted} only: {why}")


class Direct:
    """The fault is made by the probe (or the harness) against the server itself."""

    via = "direct"

    async def start(self, sc: Scenario, *server_args: str) -> tuple[ManagedProcess, str]:
        """The server; returns it and the URL clients use."""
        server = await sc.server(*server_args)
        return server, server.ready["url"]

    def fault_logged(self, events: Events, fault_type: str, after_us: int) -> tuple[Verdict, ...]:
        """Checks that the fault really happened (none: the probe made it itself)."""
        return ()


class BehindProxy:
    """The fault is made by `sendspin-proxy` in front of a multi-worker server; the
    clients are unmodified and know only the proxy's URL."""

    via = "proxy"
    workers = 2

    def __init__(self) -> None:
        self._proxy: FaultProxy | None = None

    @property
    def proxy(self) -> FaultProxy:
        assert self._proxy is not None, "start() first"
        return self._proxy

    async def start(self, sc: Scenario, *server_args: str) -> tuple[ManagedProcess, str]:
        """A coordinator with `workers` workers behind the proxy; returns it and the proxy's URL."""
        server, self._proxy = await sc.cluster_behind_proxy(self.workers, *server_args)
        return server, self._proxy.url

    def fault_logged(self, events: Events, fault_type: str, after_us: int) -> tuple[Verdict, ...]:
        """The proxy logged that it applied the fault: a scenario whose fault never happened judged nothing."""
        return (proxy_fault_applied(events, fault_type, after_us),)
