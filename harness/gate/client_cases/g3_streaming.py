"""Group 3: streaming."""

from __future__ import annotations

from ...events import Events
from ...protocol import PLAYER_AUDIO
from ...settings import Bounds
from ..client import ClientWorld
from ..verdict import Judgement
from .common import (
    RUNS_IN_NOISE,
    TERMINATED,
    NotApplicable,
    act,
    action_at,
    client_case,
    downstream_audio,
    hello_passed,
    judge_kept,
    judge_reading,
    judge_reply,
    judge_time,
    ms,
    new_command_values,
    sent_after,
    streaming,
    time_window_s,
)

STREAM_OBSERVE_S = 10.0
LEAD_SETTLE_US = 2_000_000  # the first chunks go out in a burst ahead of real time


@client_case("3.1", noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
             title="The client reads audio at the rate it is sent",
             description=f"A player session streams PCM for {STREAM_OBSERVE_S:.0f} s; the server logs what it "
                         "holds for the session every half second.",
             expectation="The server's buffers for the session stay small, no chunk goes stale unsent, and "
                         "every chunk passes the proxy well before its play time: the client reads as fast as "
                         "audio is produced.",
             source="field: a slow reader held 20 MB on the server and dragged its other listeners",
             roles=("player",))
async def reads_at_rate(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    hello = await hello_passed(w, j)
    if hello is None:
        return
    await w.observe(STREAM_OBSERVE_S)
    ev = w.events()
    ended = [r for r in ev.select("close", proc="proxy") if r["t_us"] < ev.records[-1]["t_us"]]
    j.check("connections that ended while streaming", len(ended), "==", 0)
    if ended:
        j.note(f"the first ended after {ended[0]['seconds']} s: server side {ended[0]['server']}, "
               f"client side {ended[0]['client']}")
    stats = ev.select("session_stats", session=ev.select("accept", proc="server")[0]["session"])
    sent = max((r["audio_sent"] for r in stats), default=0)
    if not j.require(sent > 0, "the server sent no audio to the client: nothing to judge (did it declare a "
                     "player format the server has?)"):
        return
    unread = [r["bytes"] for r in ev.select("client_queue")]
    j.check("most bytes the client left unread in its socket", max(unread, default=0), "<=",
            b.client_unread_bytes, "bytes", "client_unread_bytes")
    j.check("most bytes the server held for the client", max(r["held"] for r in stats), "<=", b.client_held_bytes,
            "bytes", "client_held_bytes")
    # A client that reads slower than real time holds the stream back through the proxy:
    # its chunks pass later and later, until they would arrive after their play time.
    audio = [r for r in ev.select("wire", direction="downstream", kind="binary", type=str(PLAYER_AUDIO))
             if "ts_us" in r]
    if j.require(bool(audio), "no audio chunk passed the proxy"):
        settled = [r for r in audio if r["t_us"] >= audio[0]["t_us"] + LEAD_SETTLE_US] or audio[-1:]
        worst = min(settled, key=lambda r: r["ts_us"] - r["t_us"])
        j.check("least lead of an audio chunk passing the proxy", ms(worst["ts_us"] - worst["t_us"]), ">=",
                ms(b.min_lead_us), "ms", "min_lead_us", (settled[0]["t_us"], worst["t_us"]))
    j.check("audio chunks gone stale unsent", max(r["audio_skipped"] for r in stats), "==", 0)
    j.report("audio chunks sent", sent)


SPEC_STREAM = "spec: stream/start — \"If sent for a role that already has an active stream, updates the stream " \
              "configuration\"; stream/clear, stream/end"
CLEAR_S, ENDED_S = 0.5, 1.0  # how long the session runs after stream/clear, and without a stream


def player_audio_after(ev: Events, t_us: int, sealed: bool = False) -> list[dict]:
    match = {} if sealed else {"type": str(PLAYER_AUDIO)}  # sealed: the type byte is encrypted
    return [r for r in downstream_audio(ev, sealed, **match) if r["t_us"] > t_us]


def judge_stream_again(w: ClientWorld, b: Bounds, j: Judgement, since_us: int, what: str) -> None:
    """After the stream/start the server sent at `since_us` (its action), audio went to the
    client again and it read it, on the same connection, with clock sync going on."""
    ev = w.events()
    start = sent_after(ev, w.sealed_wire, since_us, "stream/start")
    if not j.require(start is not None, f"the {what} stream/start never passed the proxy"):
        return
    assert start is not None
    audio = player_audio_after(ev, start["t_us"], w.sealed_wire)
    j.require(bool(audio), f"no audio went to the client after the {what} stream/start: nothing was read")
    judge_reading(j, b, ev, start["t_us"])
    j.report(f"audio chunks after the {what} stream/start", len(audio))
    if audio:
        j.report("their size", audio[-1]["size"], "bytes")


@client_case("3.2", noise=RUNS_IN_NOISE, title="Plays again after stream/clear, stream/end and a new stream/start",
             description=f"Once audio flows, the server sends stream/clear, {CLEAR_S:g} s later stream/end (no audio "
                         f"for {ENDED_S:g} s), then a new stream/start and audio again; the session is watched until "
                         "the client/time pause bound can tell a client that stopped syncing.",
             expectation="The client keeps the connection through all three, reads the audio that follows the new "
                         "stream/start as it comes, and goes on sending client/time.",
             source=f"{SPEC_STREAM}; field: players that tear down their connection or their reader with the "
                    "stream", roles=("player",))
async def stream_cycle(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    await act(w, "stream/clear")
    began = action_at(w.events(), "stream/clear")
    await w.observe(CLEAR_S)
    await act(w, "stream/end")
    await w.observe(ENDED_S)
    await act(w, "stream/start")
    restarted = action_at(w.events(), "stream/start")
    await w.observe(max(1.0, time_window_s(b) - (restarted - began) / 1e6))
    judge_kept(w, j, began)
    judge_stream_again(w, b, j, restarted, "new")
    judge_time(j, b, w.events(), began)


@client_case("3.3", noise=RUNS_IN_NOISE, title="Follows a format change mid-stream",
             description="Once audio flows, the server sends a new stream/start with another format the client "
                         "declared (the first other one it serves: 16/24-bit, mono/stereo PCM at 48 kHz) and streams "
                         "in it. UNIMPLEMENTED if the client declared no second such format.",
             expectation="The client keeps the connection, reads the audio in the new format as it comes, and goes "
                         "on sending client/time.",
             source=f"{SPEC_STREAM}; spec: stream/request-format — \"Response: stream/start ... with the new "
                    "format\"", roles=("player",))
async def format_change(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    answer = await act(w, "stream/start", format="other")
    began = action_at(w.events(), "stream/start")
    j.note("format {previous} → {format}".format(**answer["sessions"][0]))
    await w.observe(time_window_s(b))
    judge_kept(w, j, began)
    judge_stream_again(w, b, j, began, "new format's")
    judge_time(j, b, w.events(), began)


@client_case("3.4", noise=RUNS_IN_NOISE, title="Answers server/command volume and mute with client/state",
             description="The server sends server/command volume (a value other than the client's), then "
                         "server/command mute (the opposite of its state), each only if the client declared it in "
                         "supported_commands; the server logs each client/state's volume and muted. UNIMPLEMENTED "
                         "if it declared neither.",
             expectation="After each command the client sends client/state carrying the new value, promptly.",
             source="spec: client/state player object — \"State updates must be sent whenever any state changes, "
                    "including when the volume was changed through a server/command\"", roles=("player",))
async def answers_commands(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    hello = await hello_passed(w, j)
    if hello is None:
        return
    await w.until("client/state", lambda ev: ev.select("recv", type="client/state"), b.client_state_us / 1e6 + 1)
    unsupported = []
    for command, value in new_command_values(w.events()).items():
        try:
            answer = await act(w, "server/command", **{command: value})
        except NotApplicable as exc:
            unsupported.append(exc.reason)
            continue
        await judge_reply(w, b, j, answer["sessions"][0])
    if len(unsupported) == 2:
        raise NotApplicable("; ".join(unsupported))
    for reason in unsupported:
        j.note(f"not sent: {reason}")
    judge_kept(w, j, hello["t_us"])
