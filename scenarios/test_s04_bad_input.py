"""S04 — orphan headers and bad input from a client.

Hypothesis draws a sequence of bad inputs; after each one the client at once
sends its next command (client/time).
Expectation: each bad input is rejected with a logged reason and a
`_harness/error` naming the rule; the next command is answered, never taken
as a missing payload; the session stays open; a well-formed upload still
round-trips byte-identical afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json

from hypothesis import example, given
from hypothesis import strategies as st

from harness.checkers import proxy_fault_applied, reads_prompt, rejected, require, session_alive
from harness.fault_proxy import ControlError
from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import encode_binary, now_us
from harness.protocol import messages as m
from harness.pytest_plugin import examples
from harness.scenario import Scenario

PAYLOAD_TIMEOUT_S = 0.5
REPLY_TIMEOUT_S = 3.0


def _orphan_then_json(p: ProbeClient) -> None:
    p.send_upload(b"x" * 1000, upload_id="orphan", payload=False)


def _short_binary(p: ProbeClient) -> None:
    p.send_raw(b"\x04\x00\x01", "short_binary")


def _header_only_binary(p: ProbeClient) -> None:
    p.send_raw(encode_binary(m.UPLOAD_BINARY_TYPE, now_us()), "header_only_binary")


def _binary_where_json(p: ProbeClient) -> None:
    p.send_raw(encode_binary(4, now_us(), b"\x00" * 64), "binary_where_json")


def _malformed_json(p: ProbeClient) -> None:
    p.send_raw('{"type": "client/time", "payload": {', "malformed_json")


def _unknown_type(p: ProbeClient) -> None:
    p.send_raw(json.dumps({"type": "client/frobnicate", "payload": {}}), "unknown_type")


def _wrong_field_type(p: ProbeClient) -> None:
    p.send_raw(json.dumps({"type": "client/time", "payload": {"client_transmitted": "soon"}}), "wrong_field_type")


def _out_of_range(p: ProbeClient) -> None:
    p.send_raw(json.dumps({"type": "client/state", "payload": {"player": {"volume": 101}}}), "out_of_range")


def _upload_mismatch(p: ProbeClient) -> None:
    header = m.HarnessUpload(upload_id="liar", size=10, sha256=hashlib.sha256(b"0123456789").hexdigest())
    p.send(header)
    p.send_raw(encode_binary(m.UPLOAD_BINARY_TYPE, now_us(), b"9876543210"), "upload_mismatch")


# bad input -> text the server's rejection must contain
BAD_INPUTS = {
    _orphan_then_json: "orphan header",
    _short_binary: "needs 9 bytes",
    _header_only_binary: "unexpected binary",
    _binary_where_json: "unexpected binary message type 4",
    _malformed_json: "malformed JSON",
    _unknown_type: "unknown message type",
    _wrong_field_type: "must be an integer",
    _out_of_range: "must be in range 0..100",
    _upload_mismatch: "announced 10",
}


async def _next_command_answered(p: ProbeClient) -> None:
    sent = p.send_time()
    await p.wait_for(lambda msg: isinstance(msg, m.ServerTime) and msg.client_transmitted == sent, REPLY_TIMEOUT_S)


@examples(3)
@given(inputs=st.lists(st.sampled_from(list(BAD_INPUTS)), min_size=1, max_size=6), silent_orphan=st.booleans())
def test_s04_bad_input_is_rejected_and_session_survives(run, fresh_dir, bounds, inputs, silent_orphan):
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            server = await sc.server("--payload-timeout", str(PAYLOAD_TIMEOUT_S))
            start = now_us()
            p = await sc.probe(server.ready["url"], ProbeConfig(name="bad", time_interval_s=None))
            expectations = []
            for bad in inputs:
                t = now_us()
                errors_before = len(p.errors)
                bad(p)
                await _next_command_answered(p)
                await p.wait_for(lambda msg: isinstance(msg, m.HarnessError), REPLY_TIMEOUT_S) \
                    if len(p.errors) == errors_before else None
                expectations.append((BAD_INPUTS[bad], t))
            if silent_orphan:
                # An announced payload that never comes: refused after the payload timeout.
                t = now_us()
                p.send_upload(b"y" * 10, upload_id="silent", payload=False)
                await p.wait_for(lambda msg: isinstance(msg, m.HarnessError), PAYLOAD_TIMEOUT_S + REPLY_TIMEOUT_S)
                await _next_command_answered(p)
                expectations.append(("no payload within", t))
            data = bytes(range(256)) * 64
            p.send_upload(data, upload_id="good")
            result = await p.wait_type(m.HarnessUploadResult, REPLY_TIMEOUT_S)
            assert isinstance(result, m.HarnessUploadResult)
            assert result.sha256 == hashlib.sha256(data).hexdigest() and result.size == len(data)
            await _next_command_answered(p)
            end = now_us() + bounds.time_reply_grace_us
            events = sc.events()
            require(session_alive(events, "bad", bounds, end), reads_prompt(events, "bad", bounds, end, start),
                    *(rejected(events, "bad", text, after_us=t) for text, t in expectations))

    run(scenario())


# proxy-made orphans of an upload: (fault parameters, text the server's rejection must contain)
PROXY_ORPHANS = {
    "announce": ({"variant": "announce"}, "orphan header"),
    "cut_header": ({"variant": "binary", "keep_bytes": 5, "binary_type": m.UPLOAD_BINARY_TYPE}, "needs 9 bytes"),
    "header_only": ({"variant": "binary", "keep_bytes": 9, "binary_type": m.UPLOAD_BINARY_TYPE}, "announced"),
    "open_fragment": ({"variant": "fragment", "fragment_end": "empty_fin", "head_bytes": 100,
                       "binary_type": m.UPLOAD_BINARY_TYPE}, "announced"),
}


@examples(2)
@example(orphans=sorted(PROXY_ORPHANS))  # every kind, every run
@given(orphans=st.lists(st.sampled_from(sorted(PROXY_ORPHANS)), min_size=1, max_size=4))
def test_s04_proxy_makes_orphan_headers(run, fresh_dir, bounds, orphans):
    """The same family with the orphans made by the proxy in front of a multi-worker
    server: an unmodified client sends well-formed uploads, each followed at once by
    client/time; the proxy drops or cuts the upload's payload."""
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            _, proxy = await sc.cluster_behind_proxy(2, "--payload-timeout", str(PAYLOAD_TIMEOUT_S))
            start = now_us()
            p = await sc.probe(proxy.url, ProbeConfig(name="bad", time_interval_s=None))
            expectations = []
            for i, kind in enumerate(orphans):
                params, text = PROXY_ORPHANS[kind]
                fault = await proxy.add({"type": "orphan_header", "direction": "upstream", "count": 1, **params})
                t = now_us()
                errors_before = len(p.errors)
                p.send_upload(bytes(range(256)) * 8, upload_id=f"orphan-{i}")
                await _next_command_answered(p)
                if len(p.errors) == errors_before:
                    await p.wait_for(lambda msg: isinstance(msg, m.HarnessError), REPLY_TIMEOUT_S)
                expectations.append((text, t))
                with contextlib.suppress(ControlError):  # retired after its one orphan already
                    await proxy.remove(fault["name"])
            await proxy.reset()
            data = bytes(range(256)) * 64
            p.send_upload(data, upload_id="good")
            result = await p.wait_type(m.HarnessUploadResult, REPLY_TIMEOUT_S)
            assert isinstance(result, m.HarnessUploadResult)
            assert result.sha256 == hashlib.sha256(data).hexdigest() and result.size == len(data)
            end = now_us() + bounds.time_reply_grace_us
            events = sc.events()
            require(proxy_fault_applied(events, "orphan_header", start),
                    session_alive(events, "bad", bounds, end), reads_prompt(events, "bad", bounds, end, start),
                    *(rejected(events, "bad", text, after_us=t) for text, t in expectations))

    run(scenario())
