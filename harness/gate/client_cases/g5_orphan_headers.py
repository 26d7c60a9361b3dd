"""Group 5: orphan headers downstream (docs/architecture.md §4): the first part of a
two-part unit reaches the client and the rest never does. A correct client rejects or
ignores the orphan, never takes the next message as its missing part, and plays on."""

from __future__ import annotations

from typing import Any

from ...events import Events, Record
from ...protocol import HEADER_SIZE, PLAYER_AUDIO
from ...protocol.noise_plaintext import AUDIO_HEADER_SIZE
from ...settings import DEFAULT_BOUNDS, Bounds
from ..client import ClientWorld
from ..verdict import Judgement
from .common import (
    RUNS_IN_NOISE,
    TERMINATED,
    client_case,
    faults_acted,
    hello_passed,
    judge_kept_session,
    observe_s,
    streaming,
)

EXPECTATION = ("The client rejects or ignores the orphan and goes on on the same connection: it keeps running, "
               "keeps sending client/time (no pause over the bound) and keeps reading the audio that follows "
               "(nothing piles up unread).")
SPEC_CHUNK = ("spec: Audio Chunks (Binary) — \"Byte 0: message type 4\", \"Bytes 1-8: timestamp\", \"Rest of bytes: "
              "encoded audio frame\"; docs/architecture.md §4 (a): the orphan is rejected, the session kept")
WATCH = f"the session is then watched for {observe_s(DEFAULT_BOUNDS):.0f} s"


def _orphan_case(case_id: str, title: str, spec: dict[str, Any], what: str, source: str) -> None:
    @client_case(case_id, title, noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
                 description=f"Once audio flows, the proxy {what}; {WATCH}.",
                 expectation=EXPECTATION, source=source, roles=("player",))
    async def run(w: ClientWorld, b: Bounds, j: Judgement) -> None:
        await w.start_client()
        if await streaming(w, j) is None:
            return
        orphan = dict(spec)
        if w.profile == "noise" and orphan.get("keep_bytes") == HEADER_SIZE:  # the noise audio header: 13 bytes
            orphan["keep_bytes"] = AUDIO_HEADER_SIZE
        fault = await w.proxy.add({"type": "orphan_header", "direction": "downstream", "binary_type": PLAYER_AUDIO,
                                   "count": 1, **orphan})
        hits = await faults_acted(w, j, [fault["name"]], 5)
        if hits is None:
            return
        await w.observe(observe_s(b))
        judge_kept_session(w, b, j, hits[0]["session"], hits[0]["t_us"])


_orphan_case("5.1", "A header-only audio chunk", {"variant": "binary", "keep_bytes": HEADER_SIZE},
             "replaces one audio chunk by its header (type and timestamp, no samples: 9 bytes; noise: 13, with "
             "send_ahead)", SPEC_CHUNK)
_orphan_case("5.2", "An audio chunk shorter than its header", {"variant": "binary", "keep_bytes": 4},
             "cuts one audio chunk to its first 4 bytes (the type byte and half a timestamp)", SPEC_CHUNK)
_orphan_case("5.3", "Half an audio chunk, its fragments closed by an empty continuation",
             {"variant": "fragment", "fragment_end": "empty_fin"},
             "sends the first half of an audio chunk as a FIN=0 fragment, drops the rest and closes the sequence "
             "with an empty FIN continuation just before the next message: one complete message holding half a "
             "chunk, then the stream as before",
             "RFC 6455 §5.4 (the empty continuation completes the message); spec: Audio Chunks (Binary) — the rest "
             "of the bytes is \"encoded audio frame\": half a frame is not one; docs/architecture.md §4 (b)")


def json_after_stream_start(ev: Events) -> Record | None:
    """The first JSON message that passed to the client after its first stream/start."""
    start = next(iter(ev.select("wire", direction="downstream", type="stream/start")), None)
    if start is None:
        return None
    return next((r for r in ev.select("wire", session=start["session"], direction="downstream", kind="text")
                 if r["t_us"] > start["t_us"]), None)


@client_case("5.4", noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
             title="stream/start followed by JSON instead of audio",
             description="From the start, the proxy drops the audio chunks that follow stream/start until the next "
                         "JSON message, so the client gets stream/start, then JSON where audio was due; then the "
                         f"stream flows as before, and {WATCH}.",
             expectation="The client does not take the JSON (or anything later) as the announced data: it keeps "
                         "running, keeps sending client/time and plays the audio that comes, on the same connection.",
             source="spec: stream/start — \"Starts a stream for one or more roles\" (no data is promised next); "
                    "docs/architecture.md §4 (c)", roles=("player",))
async def announce_then_json(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    fault = await w.proxy.add({"type": "orphan_header", "variant": "announce", "data_type": PLAYER_AUDIO,
                               "binaries": None, "count": 1})
    await w.start_client()
    if await hello_passed(w, j) is None:
        return
    follows = await w.until("JSON after stream/start", json_after_stream_start, 10)
    if not j.require(follows is not None, "no stream/start followed by a JSON message reached the client within "
                     "10 s of server/hello: nothing to judge"):
        return
    # The fault acted if audio came first (it dropped it); JSON right after stream/start is the same test.
    dropped = next(iter(w.events().select("fault", fault=fault["name"])), {}).get("dropped", [])
    j.report("audio chunks dropped between stream/start and the JSON", len(dropped))
    await w.observe(observe_s(b))
    judge_kept_session(w, b, j, follows["session"], follows["t_us"])
