"""Group 3: streaming."""

from __future__ import annotations

from ...protocol import PLAYER_AUDIO
from ...settings import Bounds
from ..client import ClientWorld
from ..verdict import Judgement
from .common import client_case, hello_passed, ms

STREAM_OBSERVE_S = 10.0
LEAD_SETTLE_US = 2_000_000  # the first chunks go out in a burst ahead of real time


@client_case("3.1", "The client reads audio at the rate it is sent",
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
