"""Group 7: a slow network (latency with jitter, a bandwidth cap, small frames)."""

from __future__ import annotations

from typing import Any

from ...events import Events
from ...protocol import PLAYER_AUDIO
from ...settings import Bounds
from ..client import ClientWorld
from ..verdict import Judgement
from ..wire import flows
from .common import (
    RUNS_IN_NOISE,
    SPEC_TIME,
    TERMINATED,
    check_gap,
    client_case,
    exited,
    fault_acted,
    hello_passed,
    streaming,
    time_gaps,
)

OBSERVE_S = 6.0
SETTLE_US = 2_000_000  # the first audio goes out in a burst ahead of real time: judged after it
HEADROOM = 1.3  # the bandwidth cap over the stream's own rate
SOURCE = ("field: clients that reconnect when the network is merely slow (timeouts tuned on a LAN) end in "
          "reconnect storms (music-assistant support#6314)")


def audio_chunks(ev: Events) -> list[dict[str, Any]]:
    return [r for r in ev.select("wire", direction="downstream", kind="binary", type=str(PLAYER_AUDIO))
            if "ts_us" in r]


def stream_rate(chunks: list[dict[str, Any]]) -> float:
    """The stream's bytes per second of audio time (its format's rate, whatever the client chose)."""
    span_us = chunks[-1]["ts_us"] - chunks[0]["ts_us"]
    return sum(r["size"] for r in chunks[:-1]) * 1e6 / span_us


def judge_kept(w: ClientWorld, b: Bounds, j: Judgement, hello_us: int) -> None:
    """One connection through the case, clock sync going on, and audio read as it comes."""
    ev = w.events()
    end = max(r["t_us"] for r in ev.records)
    if exited(w, j):
        j.require(False, "the client exited during the case")
    ended = [r for r in ev.select("close", proc="proxy") if r["t_us"] < end]
    j.check("connections opened", len(flows(ev)), "==", 1)
    j.check("connections that ended", len(ended), "==", 0)
    if ended:
        j.note(f"the first ended after {ended[0]['seconds']} s: server side {ended[0]['server']}, "
               f"client side {ended[0]['client']}")
    times, gap = time_gaps(ev, hello_us, end)
    check_gap(j, b, gap)
    j.report("client/time messages", len(times))
    unread = [r["bytes"] for r in ev.select("client_queue")]
    j.check("most bytes the client left unread in its socket", max(unread, default=0), "<=",
            b.client_unread_bytes, "bytes", "client_unread_bytes")
    # how far the audio timeline advanced at the proxy once the first burst was out: a client
    # that stops reading holds the stream back (through the proxy, up to the server)
    chunks = audio_chunks(ev)
    if not j.require(bool(chunks), "no audio chunk passed the proxy"):
        return
    settled = chunks[0]["t_us"] + SETTLE_US
    before = [r["ts_us"] for r in chunks if r["t_us"] < settled]
    during = [r["ts_us"] for r in chunks if r["t_us"] >= settled]
    if not j.require(bool(before and during), "no audio passed the proxy after the first burst"):
        return
    j.check("audio time passed per second of the case", round((max(during) - max(before)) / (end - settled), 2),
            ">=", b.min_audio_fraction, "", "min_audio_fraction")


def _slow_case(case_id: str, title: str, spec: dict[str, Any], what: str, source: str,
               from_start: bool = True) -> None:
    when = "from the start" if from_start else "once audio flows"

    @client_case(case_id, title, noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
                 description=f"{what[0].upper()}{what[1:]}, {when}; the session is watched for {OBSERVE_S:.0f} s.",
                 expectation="The client keeps its session (one connection through the case, no reconnect), "
                             "keeps sending client/time, and reads the audio as it comes.",
                 source=f"{source}; {SOURCE}", roles=("player",))
    async def run(w: ClientWorld, b: Bounds, j: Judgement) -> None:
        fault = await w.proxy.add(spec) if from_start else None
        await w.start_client()
        hello = await hello_passed(w, j)
        if hello is None or await streaming(w, j) is None:
            return
        if fault is None:
            rate = stream_rate(audio_chunks(w.events()))
            fault = await w.proxy.add({**spec, "rate_bps": round(rate * HEADROOM)})
            j.report("bandwidth cap", round(rate * HEADROOM * 8 / 1e6, 2), "Mbit/s")
        await w.observe(OBSERVE_S)
        fault_acted(w.events(), fault["name"], j)
        judge_kept(w, b, j, hello["t_us"])


LATENCY = {"type": "latency", "direction": "both", "latency_ms": 150.0, "jitter_ms": 50.0}
_slow_case("7.1", "Latency with jitter both ways",
           LATENCY, f"every byte is delayed {LATENCY['latency_ms']:.0f} ± {LATENCY['jitter_ms']:.0f} ms each way "
           "(order kept)",
           f"{SPEC_TIME}, at a frequency \"determined by the client based on network conditions\"")
_slow_case("7.2", f"Bandwidth capped at {HEADROOM:g}× the audio rate",
           {"type": "bandwidth", "direction": "downstream"},
           f"the downstream is capped at {HEADROOM:g}× the stream's own rate (measured from its first chunks; "
           "PCM 48 kHz 16-bit stereo: 1.536 Mbit/s, so about 2 Mbit/s)",
           "spec: Playback Synchronization — audio may arrive late \"due to network delays or buffering\"",
           from_start=False)
SLICER = {"type": "slicer", "direction": "downstream", "frame_bytes": 64, "variation_bytes": 32}
_slow_case("7.3", "Every message in small frames",
           SLICER, f"every message the server sends is re-sent as WebSocket fragments of "
           f"{SLICER['frame_bytes']} ± {SLICER['variation_bytes']} bytes",
           "RFC 6455 §5.4 (an intermediary may split a message into fragments; a receiver reassembles them)")

