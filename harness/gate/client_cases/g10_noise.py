"""Group 10: the Noise layer (the noise profile only). The misbehaviour comes from the
reference server on cue (reference_server/actions.py: `noise/*` actions act on a live
session's codec and writer, or arm the next handshakes); the proxy, which holds no keys,
only records what passed. Judged from outside: the proxy's wire log (sizes, directions,
close frames, connections; the cleartext handshake's types) and the server's log.

Written for a server gate too: what is judged is "the receiver of X", and every rule
quoted applies to either side of a Sendspin connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...events import Events, Record
from ...settings import DEFAULT_BOUNDS, Bounds
from ..case import Severity
from ..client import ClientWorld
from ..verdict import Judgement
from .common import (
    NOISE_ONLY,
    RUNS_IN_NOISE,
    Run,
    act,
    action_at,
    client_case,
    exited,
    flow_ended,
    judge_kept,
    judge_time,
    ms,
    server_control,
    session_over,
    streaming,
    time_window_s,
)

SPEC_MALFORMED = ("messaging.md, Fragmentation: \"Malformed sequences are protocol errors; the receiver MUST close "
                  "the connection. They are: a first fragment received while a fragmented message is in flight, a "
                  "non-first fragment received with none in flight, a non-fragment binary message received while a "
                  "fragmented message is in flight, a nonzero reserved flag bit, and an orig_type of 1\"")
SPEC_SILENT = ("connection.md, Failure Handling: \"Noise AEAD failure, AEAD failure once in transport mode, or a "
               "cleartext message received after switching to transport mode - is a silent failure: the detecting "
               "side closes the connection without sending any further message\"")
SPEC_TIMEOUT = ("connection.md, Failure Handling: \"Implementations SHOULD apply a timeout (e.g., 30 seconds) for "
                "each side to receive the next expected message during the prologue and Noise-handshake phases\"")
SPEC_ERROR = ("messaging.md, server/error: \"Sent by the server in place of server/init when it cannot accept the "
              "client's client/init. The server closes the connection after sending\"; client/init: both sides "
              "\"abort the handshake on any other value\"; RFC 6455 §7.2.3 (clients SHOULD back off)")
SILENT_GRACE_US = 100_000  # what the client sent before it read the bad message may still pass the proxy
RETRY_WINDOW_S = 10.0  # how long a case counts the client's connection attempts after a failed handshake


def noise_case(case_id: str, title: str, **fields: Any) -> Callable[[Run], Run]:
    """client_case for this group: it runs in the noise profile only."""
    return client_case(case_id, title, noise=RUNS_IN_NOISE, legacy=NOISE_ONLY, **fields)


def messages_after(ev: Events, flow: str, t_us: int) -> list[Record]:
    """The Sendspin messages (not control frames) the client sent on connection `flow` after `t_us`."""
    return [r for r in ev.select("wire", session=flow, direction="upstream")
            if r["kind"] in ("text", "binary") and r["t_us"] > t_us]


def _close_expectation(what: str, silent: bool) -> str:
    return (f"The client closes the connection within the bound after {what}"
            + (" without sending any further Sendspin message" if silent else "")
            + " (it may connect again; a fresh handshake is a fresh session).")


async def _closes_after(w: ClientWorld, b: Bounds, j: Judgement, action: str, params: dict[str, Any],
                        silent: bool) -> None:
    """Once audio flows, the server does `action` to the client's session: the client gives
    the connection up promptly (silently: nothing more from it after the bad message)."""
    await w.start_client()
    up = await streaming(w, j)
    if up is None:
        return
    flow = up["session"]
    answer = (await act(w, action, **params))["sessions"][0]
    at = action_at(w.events(), action)
    bound = b.client_noise_close_us
    over = await w.until("the client closes", lambda ev: session_over(w, ev, flow, at), bound / 1e6 + 1)
    if over is None:
        exited(w, j)
    j.check(f"connection given up after {action}", None if over is None else ms(over - at), "<=", ms(bound), "ms",
            "client_noise_close_us", (at, over or at + bound))
    ev = w.events()
    if silent:
        passed = next((r for r in ev.select("wire", session=flow, direction="downstream", kind="binary")
                       if r["t_us"] >= at and r["size"] == answer["bytes"]), None)
        since = (passed["t_us"] if passed else at) + SILENT_GRACE_US
        j.check("Sendspin messages from the client on that connection after it", len(messages_after(ev, flow, since)),
                "==", 0)
    closes = [r for r in ev.select("wire", session=flow, direction="upstream", kind="close") if r["t_us"] >= at]
    if closes:
        j.note(f"the client's close frame: {closes[0].get('code')}")


def _closes_case(case_id: str, title: str, action: str, params: dict[str, Any], did: str, what: str,
                 source: str, silent: bool) -> None:
    """A case: once audio flows, the server does `action` (`did`, in words); the client
    closes the connection over `what`."""
    @noise_case(case_id, title, roles=("player",), description=f"Once audio flows, the server sends {did}.",
                expectation=_close_expectation(what, silent), source=source)
    async def run(w: ClientWorld, b: Bounds, j: Judgement) -> None:
        await _closes_after(w, b, j, action, params, silent)


WELL_ENCRYPTED = " (each message well encrypted: only the Sendspin fragment rules are broken)"
_closes_case("10.1", "Closes on a malformed fragment sequence: a last fragment with none in flight",
             "noise/fragments", {"variant": "next-without-first"},
             "a last fragment with no fragmented message in flight" + WELL_ENCRYPTED, "the malformed sequence",
             SPEC_MALFORMED, silent=False)
_closes_case("10.2", "Closes on a malformed fragment sequence: another message inside a fragmented one",
             "noise/fragments", {"variant": "first-then-other"},
             "a first fragment, then a whole JSON message before its last fragment" + WELL_ENCRYPTED,
             "the malformed sequence", SPEC_MALFORMED, silent=False)

LARGE_BYTES = 1024 * 1024 + 1


@noise_case("10.3", "Reassembles a 1 MiB fragmented message; clock sync goes on",
            description=f"Once audio flows, the server sends one well-formed JSON message of {LARGE_BYTES} bytes (an "
                        "application-specific type) in Sendspin fragments of at most 65518 bytes, nothing between "
                        "them; the session is then watched until the client/time pause bound can tell a client "
                        "that stopped syncing.",
            expectation="The client keeps the session (one connection, no close), goes on sending client/time and "
                        "reading; it ignores the reassembled message (its type is unknown to it).",
            source="messaging.md, Fragmentation: \"Larger messages must be split across multiple WebSocket binary "
                   "messages using the fragment message type\", \"When bit 0 is set, dispatch the buffer as a "
                   "single message of type orig_type\"; messaging.md: receivers \"MUST ignore JSON messages with an "
                   "unrecognized type\"", roles=("player",))
async def large_fragmented(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    answer = (await act(w, "noise/large", bytes=LARGE_BYTES))["sessions"][0]
    at = action_at(w.events(), "noise/large")
    await w.observe(time_window_s(b))
    judge_kept(w, j, at)
    judge_time(j, b, w.events(), at)
    j.report("fragments", answer["fragments"])


_closes_case("10.4", "Closes silently on a tampered ciphertext", "noise/tamper", {},
             "a transport message with one bit of its AEAD tag flipped (the nonce is the right one: only "
             "authentication fails)", "the tampered message", SPEC_SILENT, silent=True)
_closes_case("10.5", "Closes silently on cleartext after the switch to transport mode", "noise/cleartext", {},
             "a cleartext WebSocket text message (a server/time) where only encrypted binary messages may come",
             "the cleartext message", SPEC_SILENT, silent=True)


@noise_case("10.11", "Answers a server-initiated re-handshake and keeps streaming",
            description="Once audio flows, the server starts a re-handshake: Noise message 1 under the current keys "
                        "(to the same PSK), then nothing until the client's message 2, then server/activate under "
                        "the new keys, and the stream goes on; the session is then watched until the client/time "
                        "pause bound can tell a client that stopped syncing.",
            expectation="The client answers with message 2 within the bound, keeps the session (one connection, no "
                        "close), switches to the new keys (the server reads its later messages: a client still on "
                        "the old keys fails the server's authentication and is closed) and goes on sending "
                        "client/time.",
            source="connection.md, Re-handshake: the server \"MAY initiate a new Noise handshake at any time after "
                   "the connection enters transport mode\"; the client answers with message 2 under the old keys and "
                   "switches to the new ones", roles=("player",))
async def rehandshake(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    await act(w, "noise/rehandshake")
    at = action_at(w.events(), "noise/rehandshake")

    def answered(ev: Events) -> Record | None:
        return next((r for r in ev.select("recv", proc="server", type="noise/handshake") if r["t_us"] > at), None)

    bound = b.client_rehandshake_us
    reply = await w.until("message 2", answered, bound / 1e6 + 1)
    j.check("message 2 after the re-handshake's message 1", None if reply is None else ms(reply["t_us"] - at), "<=",
            ms(bound), "ms", "client_rehandshake_us", (at, reply["t_us"] if reply else at + bound))
    if reply is None:
        return
    await w.observe(time_window_s(b))
    judge_kept(w, j, at)
    judge_time(j, b, w.events(), reply["t_us"])


def attempts_after(ev: Events, t_us: int, window_s: float) -> list[Record]:
    """The client's connection attempts the proxy accepted in (t, t + window]."""
    return [r for r in ev.select("accept", proc="proxy") if t_us < r["t_us"] <= t_us + window_s * 1e6]


async def judge_retries(w: ClientWorld, b: Bounds, j: Judgement, t_us: int) -> None:
    """After a failed handshake at `t_us`: a bounded number of attempts in the next window
    (every handshake in the case fails the same way). Server-initiated, the attempts are the
    server's dials, not the client's: nothing to count."""
    if w.initiator == "server":
        j.note("server-initiated: every new connection is the server's dial, so attempts are not counted")
        return
    await w.observe(RETRY_WINDOW_S - max(0.0, (w.events().records[-1]["t_us"] - t_us) / 1e6))
    tries = attempts_after(w.events(), t_us, RETRY_WINDOW_S)
    j.check(f"connection attempts in the {RETRY_WINDOW_S:.0f} s after", len(tries), "<=", b.client_refused_attempts,
            "", "client_refused_attempts")
    if exited(w, j):
        j.note("the client gave up (its process ended): no storm")


def stall_hold_ms(b: Bounds) -> int:
    """How long the server holds a stalled handshake: past the bound, so the client decides."""
    return b.client_handshake_wait_us // 1000 + 5000


STALL_HOLD_MS = stall_hold_ms(DEFAULT_BOUNDS)


def _stall(case_id: str, step: str, where: str) -> None:
    @noise_case(case_id, f"A handshake stalled {where}: a bounded wait, no storm", severity=Severity.SHOULD,
                timeout_s=90.0,
                description=f"Every handshake of the case stalls {where}: the server sends nothing more (and holds "
                            f"the connection open for {STALL_HOLD_MS / 1000:.0f} s or until the client closes it). "
                            f"Connection attempts are counted for {RETRY_WINDOW_S:.0f} s after the first one ended.",
                expectation="The client gives the stalled connection up within the bound (a handshake timeout), "
                            "and retries, if at all, with a backoff.",
                source=SPEC_TIMEOUT)
    async def run(w: ClientWorld, b: Bounds, j: Judgement) -> None:
        await server_control(w).act("noise/handshake-stall", step=step, count=1000, hold_ms=stall_hold_ms(b))
        await w.start_client()
        stalled = await w.until("the stall", lambda ev: next((r for r in ev.select("action", action="noise/"
                                "handshake-stall") if r["session"] is not None), None), 15)
        if not j.require(stalled is not None, w.start_problem or f"no handshake reached {step} within 15 s"):
            return
        flow = w.events().select("accept", proc="proxy")[0]["session"]
        at, bound = stalled["t_us"], b.client_handshake_wait_us
        over = await w.until("the client gives up", lambda ev: session_over(w, ev, flow, at), bound / 1e6 + 1)
        j.check("stalled connection given up after", None if over is None else ms(over - at), "<=", ms(bound),
                "ms", "client_handshake_wait_us", (at, over or at + bound))
        if over is not None:
            await judge_retries(w, b, j, over)


_stall("10.6", "server/init", "after client/init, before server/init")
_stall("10.7", "noise/handshake", "after server/init, before Noise message 1")
_stall("10.8", "server/hello", "after Noise message 2, before server/hello")


INIT_ERROR_EXPECTATION = ("The client sends nothing more on that connection and retries, if at all, with a "
                          "backoff (the same client/init will be refused again).")


def _init_error(case_id: str, reason: str) -> None:
    what = (f"Every client/init of the case is answered with server/error {{\"reason\": \"{reason}\"}} in place of "
            f"server/init, then the server closes. Connection attempts are counted for {RETRY_WINDOW_S:.0f} s after "
            "the first server/error.")

    @noise_case(case_id, f"server/error {reason}: the handshake aborted, no storm", severity=Severity.SHOULD,
                description=what, expectation=INIT_ERROR_EXPECTATION, source=SPEC_ERROR)
    async def run(w: ClientWorld, b: Bounds, j: Judgement) -> None:
        await server_control(w).act("noise/init-error", reason=reason, count=1000)
        await w.start_client()
        error = await w.until("server/error", lambda ev: next(iter(ev.select("wire", direction="downstream",
                                                                             type="server/error")), None), 15)
        if not j.require(error is not None, w.start_problem or "no server/error reached the proxy within 15 s: the "
                         "client sent no client/init"):
            return
        flow, at = error["session"], error["t_us"]
        await w.until("the connection ends", lambda ev: flow_ended(ev, flow, at), 3)
        j.check("messages from the client after server/error", len(messages_after(w.events(), flow, at)), "==", 0)
        await judge_retries(w, b, j, at)


_init_error("10.9", "unsupported_version")
_init_error("10.10", "unsupported_suite")
