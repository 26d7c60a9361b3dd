"""The fault catalogue: every fault type is registered, describes itself, round-trips its
spec, and rejects bad parameters with a message naming the fault and the rule (the
interface itself and drop/latency/reset_peer: test_proxy_faults_core.py)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.faults import FaultSpecError, build_fault, fault_types

MINE = ("orphan_header", "stalled_payload", "slow_reader", "worker_crash", "bandwidth", "slicer", "limit_data",
        "timeout", "slow_close", "down", "duplicate", "delay", "corrupt", "truncate", "close", "inject")

# --- the catalogue -------------------------------------------------------------------------------


def test_every_fault_is_registered_and_describes_its_parameters() -> None:
    types = fault_types()
    assert set(MINE) <= set(types)
    for kind in MINE:
        d = types[kind].describe()
        assert d["description"] and d["type"] == kind
        f = build_fault({"type": kind, **_minimal(kind)})
        assert build_fault(f.spec()).spec() == f.spec()  # PATCH relies on the round trip


def _minimal(kind: str) -> dict[str, Any]:
    return {"bandwidth": {"rate_bps": 1000}, "slow_reader": {"rate_bps": 0},
            "limit_data": {"limit_bytes": 10}, "inject": {"text": "{}"}}.get(kind, {})


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "orphan_header", "variant": "binary", "binaries": 3},
     "orphan_header: parameter 'binaries' applies to variant 'announce' only (this one is 'binary')"),
    ({"type": "orphan_header", "variant": "fragment", "keep_bytes": 4}, "'keep_bytes' applies to variant 'binary'"),
    ({"type": "orphan_header", "keep_bytes": 14}, "parameter 'keep_bytes' must be <= 13"),
    ({"type": "orphan_header", "variant": "sideways"}, "parameter 'variant' must be one of ['binary', 'fragment'"),
    ({"type": "orphan_header", "variant": "fragment", "fragment_end": "x"}, "'fragment_end' must be one of"),
    ({"type": "orphan_header", "json_type": "stream/start"}, "variant 'binary' acts on binary messages"),
    ({"type": "orphan_header", "variant": "announce", "binary_type": 4}, "use data_type for the binary data"),
    ({"type": "stalled_payload", "mode": "tcp"}, "parameter 'mode' must be one of ['frame', 'bytes']"),
    ({"type": "stalled_payload", "stall_s": -1}, "parameter 'stall_s' must be >= 0.0"),
    ({"type": "slow_reader"}, "slow_reader: missing required parameter 'rate_bps'"),
    ({"type": "slow_reader", "rate_bps": 10, "rcvbuf_bytes": 10}, "'rcvbuf_bytes' must be >= 1024"),
    ({"type": "slow_reader", "rate_bps": 10, "json_type": "x"}, "slow_reader: takes no selector"),
    ({"type": "bandwidth", "rate_bps": -1}, "bandwidth: parameter 'rate_bps' must be >= 0.0"),
    ({"type": "slicer", "frame_bytes": 0}, "slicer: parameter 'frame_bytes' must be >= 1"),
    ({"type": "slicer", "frame_bytes": 10, "variation_bytes": 10}, "variation_bytes (10) must be smaller"),
    ({"type": "limit_data"}, "limit_data: missing required parameter 'limit_bytes'"),
    ({"type": "timeout", "end": "slam"}, "timeout: parameter 'end' must be one of ['fin', 'rst']"),
    ({"type": "slow_close", "delay_ms": "soon"}, "slow_close: parameter 'delay_ms' must be a number"),
    ({"type": "down", "direction": "upstream"}, "down: direction must be one of ['both']"),
    ({"type": "duplicate", "copies": 0}, "duplicate: parameter 'copies' must be >= 1"),
    ({"type": "delay", "reorder": "yes"}, "delay: parameter 'reorder' must be a boolean"),
    ({"type": "corrupt", "xor": 0}, "corrupt: parameter 'xor' must be >= 1"),
    ({"type": "truncate", "keep_bytes": -1}, "truncate: parameter 'keep_bytes' must be >= 0"),
    ({"type": "close", "code": 1006}, "close: parameter 'code' 1006 must not be sent on the wire"),
    ({"type": "close", "reason": "x" * 124}, "'reason' must be at most 123 UTF-8 bytes"),
    ({"type": "close", "code": None, "reason": "why"}, "a reason needs a code"),
    ({"type": "close", "after_s": 1, "json_type": "x"}, "after_s (a timed close) and a selector"),
    ({"type": "worker_crash", "action": "explode"}, "worker_crash: parameter 'action' must be one of"),
    ({"type": "worker_crash", "direction": "downstream"}, "worker_crash: direction must be one of ['both']"),
])
def test_bad_parameters_are_rejected_naming_the_fault_and_the_rule(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(FaultSpecError) as e:
        build_fault(spec)
    assert message in str(e.value)
