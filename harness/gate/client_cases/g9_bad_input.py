"""Group 9: bad input. While the client streams, the proxy injects messages a server
should never send (`inject` fault) between the server's own; the server knows nothing of
them. The legacy spec has no error message, so a client that cannot use a message has two
correct answers: ignore it, or close the connection with a code (RFC 6455 §7.4.1) and
connect again. Messages the spec allows (application-specific objects) must be ignored."""

from __future__ import annotations

import json
from typing import Any

from ...settings import DEFAULT_BOUNDS, Bounds
from ..case import Severity
from ..client import ClientWorld
from ..verdict import Judgement
from .common import (
    RUNS_IN_NOISE,
    TERMINATED,
    client_case,
    faults_acted,
    judge_kept_session,
    judge_survived,
    observe_s,
    streaming,
)

INJECT_GAP_S = 0.3  # between two injections of one case
OVERSIZED_BYTES = 16 * 1024 * 1024

SURVIVES = ("The client survives: it keeps running and either ignores the message (the same connection goes on: "
            "client/time keeps flowing, audio keeps being read) or closes the connection with a close frame and a "
            "code, then connects again and streams. Never a crash, a connection dropped without a close frame, or "
            "a session gone quiet.")
IGNORES = ("The client ignores what it does not know and goes on on the same connection: it keeps running, keeps "
           "sending client/time and keeps reading audio. Closing the connection over it is a failure.")
NO_ERROR_MESSAGE = ("the spec defines no error message: what a client cannot use it ignores, or it closes with a "
                    "code (RFC 6455 §7.4.1: 1003, 1007, 1008)")
WATCH = f"the session is then watched for {observe_s(DEFAULT_BOUNDS):.0f} s"


def text(message: Any) -> dict[str, Any]:
    """An inject spec for a JSON message (or any string)."""
    return {"text": message if isinstance(message, str) else json.dumps(message)}


def _bad_input_case(case_id: str, title: str, messages: list[dict[str, Any]], what: str, *, source: str,
                    must_ignore: bool = False, severity: Severity = Severity.MUST, settle: str = "") -> None:
    @client_case(case_id, title, noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
                 description=f"Once audio flows, the proxy sends the client {what}; {WATCH}.",
                 expectation=IGNORES if must_ignore else SURVIVES, source=source, severity=severity,
                 roles=("player",))
    async def run(w: ClientWorld, b: Bounds, j: Judgement) -> None:
        await w.start_client()
        if await streaming(w, j) is None:
            return
        names = []
        for i, spec in enumerate(messages):
            fault = await w.proxy.add({"type": "inject", "direction": "downstream", "after_s": i * INJECT_GAP_S,
                                       **spec})
            names.append(fault["name"])
        hits = await faults_acted(w, j, names, 5 + len(messages) * INJECT_GAP_S)
        if hits is None:
            return
        await w.observe(observe_s(b))
        first = hits[0]
        settle_us = getattr(b, settle) if settle else 0  # a bound: how long reading what was sent may take
        if must_ignore:
            judge_kept_session(w, b, j, first["session"], first["t_us"], settle_us)
        else:
            await judge_survived(w, b, j, first["session"], first["t_us"], settle_us)


_bad_input_case("9.1", "Malformed JSON",
                [text("this is not JSON {"),
                 text('{"type": "server/time", "payload": {"client_transmitted": 12')],
                "a text message that is not JSON at all, then a truncated one",
                source=f"spec: Communication — \"WebSocket text messages are used to send JSON payloads\"; "
                       f"{NO_ERROR_MESSAGE}")
_bad_input_case("9.2", "An unknown message type",
                [text({"type": "server/gate-unknown", "payload": {"gate": 1}})],
                "a well-formed message whose type no revision of the spec defines",
                source=f"spec: Communication — \"All messages have a `type` field identifying the message\"; "
                       f"{NO_ERROR_MESSAGE}")
_bad_input_case("9.3", "Wrong field types in a known message",
                [text({"type": "server/time", "payload": {"client_transmitted": "1", "server_received": "2",
                                                          "server_transmitted": "3"}}),
                 text({"type": "server/command", "payload": {"player": {"command": "volume", "volume": "loud"}}})],
                "a server/time whose timestamps are strings, then a server/command whose volume is a string",
                source="spec: server/time — \"`client_transmitted`: integer\", \"`server_received`: integer\"; "
                       f"server/command player — \"`volume?`: integer\"; {NO_ERROR_MESSAGE}")
_bad_input_case("9.4", "Application-specific objects in known messages",
                [text({"type": "server/state", "payload": {"_gate_display": {"mode": "test", "level": 3}}}),
                 text({"type": "server/command", "payload": {"_gate_display": {"command": "blink"}}})],
                "a server/state and a server/command that carry only an application-specific object "
                "(`_gate_display`)",
                source="spec: server/state, server/command — \"Application-specific roles may also include objects "
                       "in this message (keys starting with `_`)\": valid messages, to be ignored by a client "
                       "without that role",
                must_ignore=True)
_bad_input_case("9.5", "An oversized message",
                [{**text({"type": "server/state", "payload": {}}),
                  "pad_bytes": OVERSIZED_BYTES - len(json.dumps({"type": "server/state", "payload": {}}))}],
                f"a {OVERSIZED_BYTES >> 20} MiB text message (a valid server/state padded with whitespace)",
                source="RFC 6455 §10.4 — an endpoint with a message size limit \"MUST protect themselves against "
                       "exceeding those limits\"; §7.4.1: close code 1009 (message too big)",
                settle="client_large_message_us")
_bad_input_case("9.6", "Fields of a future revision",
                [text({"type": "group/update",
                       "payload": {"playback_state": "playing", "gate_future_field": {"x": 1}}}),
                 text({"type": "server/state", "payload": {"lighting": {"scene": "calm"}}})],
                "a group/update with a field this revision does not define, then a server/state with the object "
                "of a role it does not define",
                source="spec: Role Versioning — \"All role names and versions not starting with `_` are reserved for "
                       "future revisions of this specification\" (a client meets a newer server's fields; the spec "
                       "does not say to ignore them, hence SHOULD)",
                must_ignore=True, severity=Severity.SHOULD)
