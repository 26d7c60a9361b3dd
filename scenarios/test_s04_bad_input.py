"""S04 — orphan headers and bad input from a client.

Hypothesis draws a sequence of bad inputs; after each one the client at once
sends its next command (client/time).
Expectation: each bad input is rejected with a logged reason and a
`_harness/error` naming the rule; the next command is answered, never taken
as a missing payload; the session stays open; a well-formed upload still
round-trips byte-identical afterwards.

Two families share one skeleton (`bad_inputs_rejected`): the probe itself sends
each bad input against the server (`ProbeSends`), or an unmodified client sends
well-formed uploads and the proxy in front of a multi-worker server cuts or
drops their payloads (`ProxyOrphans`).

In the noise profile (`--profile`) the probe sends the noise form of each bad input
it has one of: the same bad JSON body or binary, well encrypted, so only the
Sendspin layer is wrong (`NoiseProbeSends`). Noise has no `_harness` role (no
`_harness/error`, no uploads), so the rejection is judged from the server's log
alone and there is no upload round trip; an upload's orphan header has a noise
form that ends the session instead (a malformed fragment sequence: `MUST close`),
so that is its own scenario, `test_s04_malformed_fragment_sequence_closes`.
`ProxyOrphans` cuts uploads, the `_harness` role's: legacy only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Callable
from typing import Any

from faultsite import BehindProxy, Direct, only_in
from hypothesis import example, given
from hypothesis import strategies as st

from harness.checkers import (
    closed_by_policy,
    closed_silently,
    healthy_players,
    reads_prompt,
    rejected,
    require,
    session_alive,
)
from harness.fault_proxy import ControlError
from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import closecodes, encode_binary, now_us
from harness.protocol import fragments as frag
from harness.protocol import messages as m
from harness.pytest_plugin import examples
from harness.scenario import Scenario
from harness.settings import Bounds

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


def _sealed(plaintext: bytes) -> Callable[[ProbeClient], None]:
    """Send `plaintext` as one well-encrypted noise transport message (only the Sendspin layer is bad)."""
    def send(p: ProbeClient) -> None:
        p.send_raw(p.codec.encrypt_plaintext(plaintext), "noise_plaintext")
    return send


def _json_body(body: str) -> bytes:
    return b"\x00" + body.encode()  # the noise revision's JSON message: type byte 0, then the body


_NOISE_STATE = {"available": True, "player": {"volume": 101, "muted": False, "supported_commands": []}}
# legacy bad input -> its noise form (None: it has none that leaves the session open) and the rejection's text
NOISE_FORMS: dict[Callable[[ProbeClient], None], tuple[Callable[[ProbeClient], None], str] | None] = {
    _orphan_then_json: None,  # a malformed fragment sequence: test_s04_malformed_fragment_sequence_closes
    _short_binary: (_sealed(b"\x04\x00\x01"), "needs a 13-byte header"),
    _header_only_binary: (_sealed(bytes([m.UPLOAD_BINARY_TYPE]) + bytes(8)), "binary message type 192"),
    _binary_where_json: (_sealed(b"\x04" + bytes(64)), "binary message type 4"),
    _malformed_json: (_sealed(_json_body('{"type": "client/time", "payload": {')), "malformed JSON"),
    _unknown_type: (_sealed(_json_body(json.dumps({"type": "client/frobnicate", "payload": {}}))),
                    "unknown message type"),
    _wrong_field_type: (_sealed(_json_body(json.dumps({"type": "client/time",
                                                       "payload": {"client_transmitted": "soon"}}))),
                        "must be an integer"),
    _out_of_range: (_sealed(_json_body(json.dumps({"type": "client/state", "payload": _NOISE_STATE}))),
                    "must be in range 0..100"),
    _upload_mismatch: None,  # uploads are the _harness role's, which noise sessions do not activate
}

# Malformed Sendspin fragment sequences (messaging.md, Fragmentation: "the receiver MUST close
# the connection"): the plaintexts, each well encrypted, and the rule the server must name.
_DATA = bytes(range(256)) * 4
_FIRST = bytes([frag.FRAGMENT, frag.FLAG_FIRST, 0]) + _DATA
FRAGMENT_SEQUENCES = {
    "first-then-other": ([_FIRST, _json_body('{"type": "client/time", "payload": {"client_transmitted": 1}}')],
                         frag.RULE_OTHER_IN_FLIGHT),
    "first-twice": ([_FIRST, _FIRST], frag.RULE_FIRST_IN_FLIGHT),
    "next-without-first": ([bytes([frag.FRAGMENT, frag.FLAG_LAST]) + _DATA], frag.RULE_NEXT_WITHOUT_FIRST),
    "reserved-flags": ([bytes([frag.FRAGMENT, frag.FLAG_FIRST | 0x04, 0]) + _DATA], frag.RULE_RESERVED_FLAGS),
    "orig-type-1": ([bytes([frag.FRAGMENT, frag.FLAG_FIRST, frag.FRAGMENT]) + _DATA], frag.RULE_ORIG_TYPE_1),
}


# proxy-made orphans of an upload: (fault parameters, text the server's rejection must contain)
PROXY_ORPHANS = {
    "announce": ({"variant": "announce"}, "orphan header"),
    "cut_header": ({"variant": "binary", "keep_bytes": 5, "binary_type": m.UPLOAD_BINARY_TYPE}, "needs 9 bytes"),
    "header_only": ({"variant": "binary", "keep_bytes": 9, "binary_type": m.UPLOAD_BINARY_TYPE}, "announced"),
    "open_fragment": ({"variant": "fragment", "fragment_end": "empty_fin", "head_bytes": 100,
                       "binary_type": m.UPLOAD_BINARY_TYPE}, "announced"),
}
FAULT = "orphan_header"


async def _next_command_answered(p: ProbeClient) -> None:
    sent = p.send_time()
    await p.wait_for(lambda msg: isinstance(msg, m.ServerTime) and msg.client_transmitted == sent, REPLY_TIMEOUT_S)


class Injection:
    """One bad input: armed (the proxy: its fault added), sent by the client, disarmed."""

    def __init__(self, text: str, send: Callable[[ProbeClient], None]) -> None:
        self.text = text  # what the server's rejection must contain
        self.send = send

    async def arm(self) -> None:
        pass

    async def disarm(self) -> None:
        pass


class ProbeSends(Direct):
    """The probe itself sends each bad input; optionally an announced payload that never comes."""

    harness_aware = True

    def __init__(self, inputs: list[Callable[[ProbeClient], None]], silent_orphan: bool) -> None:
        self.inputs, self.silent_orphan = inputs, silent_orphan

    def injections(self) -> list[Injection]:
        return [Injection(BAD_INPUTS[bad], bad) for bad in self.inputs]

    async def after_inputs(self, p: ProbeClient) -> list[tuple[str, int]]:
        if not self.silent_orphan:
            return []
        # An announced payload that never comes: refused after the payload timeout.
        t = now_us()
        p.send_upload(b"y" * 10, upload_id="silent", payload=False)
        await p.wait_for(lambda msg: isinstance(msg, m.HarnessError), PAYLOAD_TIMEOUT_S + REPLY_TIMEOUT_S)
        await _next_command_answered(p)
        return [("no payload within", t)]


class NoiseProbeSends(Direct):
    """The probe sends the noise form of each bad input that has one (NOISE_FORMS)."""

    harness_aware = False  # no _harness/error to wait for, no upload to round-trip

    def __init__(self, inputs: list[Callable[[ProbeClient], None]]) -> None:
        forms = [form for bad in inputs if (form := NOISE_FORMS[bad]) is not None]
        self.forms = forms or [NOISE_FORMS[_malformed_json]]  # always at least one bad input to judge

    def injections(self) -> list[Injection]:
        return [Injection(text, send) for send, text in self.forms]  # type: ignore[misc]

    async def after_inputs(self, p: ProbeClient) -> list[tuple[str, int]]:
        return []


class ProxyOrphan(Injection):
    """A well-formed upload (then client/time at once) whose payload the proxy drops or cuts."""

    def __init__(self, site: ProxyOrphans, kind: str, i: int) -> None:
        params, text = PROXY_ORPHANS[kind]
        super().__init__(text, lambda p: p.send_upload(bytes(range(256)) * 8, upload_id=f"orphan-{i}"))
        self.site, self.params = site, params
        self.fault: dict[str, Any] = {}

    async def arm(self) -> None:
        self.fault = await self.site.proxy.add({"type": FAULT, "direction": "upstream", "count": 1, **self.params})

    async def disarm(self) -> None:
        with contextlib.suppress(ControlError):  # retired after its one orphan already
            await self.site.proxy.remove(self.fault["name"])


class ProxyOrphans(BehindProxy):
    """The proxy makes the orphans: an `orphan_header` fault per upload."""

    harness_aware = True

    def __init__(self, orphans: list[str]) -> None:
        super().__init__()
        self.orphans = orphans

    def injections(self) -> list[Injection]:
        return [ProxyOrphan(self, kind, i) for i, kind in enumerate(self.orphans)]

    async def after_inputs(self, p: ProbeClient) -> list[tuple[str, int]]:
        await self.proxy.reset()
        return []


async def bad_inputs_rejected(sc: Scenario, bounds: Bounds, site: ProbeSends | NoiseProbeSends | ProxyOrphans,
                              profile: str = "legacy") -> None:
    """After each bad input the client at once sends client/time: it must be answered, the
    input rejected with its reason; the session survives and a good upload round-trips
    (with the _harness role: legacy)."""
    _, url = await site.start(sc, "--payload-timeout", str(PAYLOAD_TIMEOUT_S))
    start = now_us()
    p = await sc.probe(url, ProbeConfig(name="bad", time_interval_s=None, profile=profile))
    expectations = []
    for bad in site.injections():
        await bad.arm()
        t = now_us()
        errors_before = len(p.errors)
        bad.send(p)
        await _next_command_answered(p)
        if site.harness_aware and len(p.errors) == errors_before:
            await p.wait_for(lambda msg: isinstance(msg, m.HarnessError), REPLY_TIMEOUT_S)
        expectations.append((bad.text, t))
        await bad.disarm()
    expectations += await site.after_inputs(p)
    if site.harness_aware:
        data = bytes(range(256)) * 64
        p.send_upload(data, upload_id="good")
        result = await p.wait_type(m.HarnessUploadResult, REPLY_TIMEOUT_S)
        assert isinstance(result, m.HarnessUploadResult)
        assert result.sha256 == hashlib.sha256(data).hexdigest() and result.size == len(data)
    await _next_command_answered(p)
    end = now_us() + bounds.time_reply_grace_us
    events = sc.events()
    require(*site.fault_logged(events, FAULT, start),
            session_alive(events, "bad", bounds, end), reads_prompt(events, "bad", bounds, end, start),
            *(rejected(events, "bad", text, after_us=t) for text, t in expectations))


@examples(3, noise=2)
@given(inputs=st.lists(st.sampled_from(list(BAD_INPUTS)), min_size=1, max_size=6), silent_orphan=st.booleans())
def test_s04_bad_input_is_rejected_and_session_survives(run, fresh_dir, bounds, profile, inputs, silent_orphan):
    """In noise: the noise form of each drawn input (NOISE_FORMS); `silent_orphan` is an
    upload's, legacy only."""
    site = ProbeSends(inputs, silent_orphan) if profile == "legacy" else NoiseProbeSends(inputs)

    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            await bad_inputs_rejected(sc, bounds, site, profile)

    run(scenario())


@only_in("legacy", "uploads are the _harness role's, which noise sessions do not activate; the noise form of an "
                   "orphan is test_s04_malformed_fragment_sequence_closes")
@examples(2)
@example(orphans=sorted(PROXY_ORPHANS))  # every kind, every run
@given(orphans=st.lists(st.sampled_from(sorted(PROXY_ORPHANS)), min_size=1, max_size=4))
def test_s04_proxy_makes_orphan_headers(run, fresh_dir, bounds, profile, orphans):
    """The same family with the orphans made by the proxy in front of a multi-worker
    server: an unmodified client sends well-formed uploads, each followed at once by
    client/time; the proxy drops or cuts the upload's payload."""
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            await bad_inputs_rejected(sc, bounds, ProxyOrphans(orphans))

    run(scenario())


@only_in("noise", "Sendspin fragments are the noise revision's; legacy's orphan header leaves the session open "
                  "(test_s04_bad_input_is_rejected_and_session_survives)")
@examples(2)
@example(variant="first-then-other", others=1)  # the noise form of an orphan header, every run
@given(variant=st.sampled_from(sorted(FRAGMENT_SEQUENCES)), others=st.integers(1, 2))
def test_s04_malformed_fragment_sequence_closes(run, fresh_dir, bounds, profile, variant, others):
    """Noise: a client sends a malformed Sendspin fragment sequence (each message well
    encrypted). Expectation: the server closes that connection promptly and silently
    (no further message; the close has no reason), its log naming the rule; the other
    players stream on unaffected."""
    plaintexts, rule = FRAGMENT_SEQUENCES[variant]

    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            server = await sc.server()
            url = server.ready["url"]
            start = now_us()
            players = [await sc.probe(url, ProbeConfig(name=f"player-{i + 1}", profile=profile))
                       for i in range(others)]
            bad = await sc.probe(url, ProbeConfig(name="bad", profile=profile))
            await asyncio.sleep(1.0)  # baseline for the isolation check
            sent_at = now_us()
            for plaintext in plaintexts:  # back to back: nothing of the probe's own goes between them
                bad.send_raw(bad.codec.encrypt_plaintext(plaintext), f"noise_fragments:{variant}")
            limit_us = bounds.client_noise_close_us
            await asyncio.wait_for(bad.closed.wait(), limit_us / 1e6 + 1)
            await asyncio.sleep(1.0)
            end = now_us()
            events = sc.events()
            require(
                rejected(events, "bad", rule, after_us=sent_at),
                closed_by_policy(events, "bad", closecodes.NORMAL, sent_at, limit_us),
                closed_silently(events, "bad", sent_at),
                *healthy_players(events, players, bounds, start, end, fault_us=sent_at),
            )

    run(scenario())
