"""Group 4: chunked and large messages (RFC 6455 fragmentation, control frames between fragments)."""

from __future__ import annotations

from ...events import Events, Record
from ...protocol import HEADER_SIZE, PLAYER_AUDIO, artwork_type, now_us
from ...settings import Bounds
from ..client import ClientWorld
from ..verdict import Judgement
from .common import (
    LEGACY_FRAMES,
    NOISE_ARTWORK,
    RUNS_IN_NOISE,
    TERMINATED,
    NotApplicable,
    act,
    action_at,
    client_case,
    fault_acted,
    first_after,
    hello_passed,
    judge_kept,
    judge_reading,
    judge_reply,
    judge_time,
    ms,
    new_command_values,
    streaming,
    time_window_s,
)

RFC_FRAGMENTS = "RFC 6455 §5.4 — \"an endpoint MUST be capable of handling control frames in the middle of a " \
                "fragmented message\"; a message may be split into any number of fragments"
JSON_FRAMES = 8  # a stream/start or server/command of ~100 bytes: about 13 bytes a frame
AUDIO_FRAME_BYTES = 1000  # a 48 kHz stereo 16-bit chunk (4809 bytes) in 5 frames
KiB, MiB = 1024, 1024 * 1024
ARTWORK_FRAGMENT = 256 * KiB
# When an image's last frame passed the proxy, up to the loopback socket buffers' worth
# (a few MiB) is still on its way to the client: it reads what follows from this later.
DRAIN_US = 1_000_000


async def _watch(w: ClientWorld, b: Bounds, j: Judgement, began: int, reading: bool = True) -> None:
    """The rest of the time window after `began`, then what every case here expects: the
    session kept (no 1002), client/time going on, and (if `reading`) the client still reading."""
    await w.observe(max(0.5, time_window_s(b) - (now_us() - began) / 1e6))
    judge_kept(w, j, began)
    ev = w.events()
    judge_time(j, b, ev, began)
    if reading:
        judge_reading(j, b, ev, began)


def _passed(j: Judgement, ev: Events, since_us: int, what: str, frames: int, **match: object) -> Record | None:
    """The message the server split passed the proxy in `frames` frames (else the case tested nothing)."""
    seen = first_after(ev, since_us, direction="downstream", **match)
    j.require(seen is not None and seen.get("fragments", 1) >= frames,
              f"the {what} did not pass the proxy in {frames} frames ({seen.get('fragments', 1) if seen else 'never'})"
              ": the case tested nothing")
    return seen


@client_case("4.1", noise=LEGACY_FRAMES, title="Reassembles JSON messages sent in several frames",
             description=f"Once audio flows, the server sends a stream/start (the current format again) in "
                         f"{JSON_FRAMES} frames, then a server/command volume (or mute) in {JSON_FRAMES} frames if the "
                         "client declared one.",
             expectation="The client keeps the session (no 1002), goes on reading audio and sending client/time, and "
                         "answers the fragmented server/command with client/state carrying the new value: it read "
                         "the message whole.",
             source=f"{RFC_FRAGMENTS}; field: clients that parse each frame as a message, or only the first",
             roles=("player",))
async def fragmented_json(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    await act(w, "stream/start", frames=JSON_FRAMES)
    ev = w.events()
    began = action_at(ev, "stream/start")
    answer = None
    for command, value in new_command_values(ev).items():
        try:
            answer = await act(w, "server/command", frames=JSON_FRAMES, **{command: value})
            break
        except NotApplicable as exc:
            j.note(f"no {command}: {exc.reason}")
    if answer is not None:
        await judge_reply(w, b, j, answer["sessions"][0])
    await _watch(w, b, j, began)
    _passed(j, w.events(), began, "stream/start", JSON_FRAMES, type="stream/start")


@client_case("4.2", noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
             title="Reassembles audio chunks sent in several frames",
             description=f"Once audio flows, the proxy re-sends every audio chunk as frames of {AUDIO_FRAME_BYTES} "
                         "bytes (the slicer fault) for the rest of the case.",
             expectation="The client keeps the session (no 1002), reads the audio as it comes and goes on sending "
                         "client/time.",
             source=f"{RFC_FRAGMENTS}; field: clients that take the first frame of a binary message as the whole",
             roles=("player",))
async def fragmented_audio(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    fault = await w.proxy.add({"type": "slicer", "direction": "downstream", "binary_type": PLAYER_AUDIO,
                               "frame_bytes": AUDIO_FRAME_BYTES})
    began = w.events().select("fault_added")[-1]["t_us"]
    await _watch(w, b, j, began)
    ev = w.events()
    if fault_acted(ev, fault["name"], j):
        sliced = ev.select("fault", fault=fault["name"])
        j.report("audio chunks sliced", len(sliced))
        j.report("frames per chunk", max(r["frames"] for r in sliced))


def _artwork_case(case_id: str, size: int, thorough: bool) -> None:
    label = f"{size // MiB} MiB"

    @client_case(case_id, f"Takes a {label} artwork in {ARTWORK_FRAGMENT // KiB} KiB fragments", noise=NOISE_ARTWORK,
                 description=f"The server sends artwork channel 0 a {label} image (stream/start, then one binary "
                             f"message in {ARTWORK_FRAGMENT // KiB} KiB fragments) and watches the session on.",
                 expectation="The client reads the whole image, keeps the session (no 1002, no 1009), goes on sending "
                             "client/time during the transfer, and reads what follows.",
                 source=f"{RFC_FRAGMENTS}; spec: artwork binary messages (types 8-11); field: clients with a small "
                        "message limit or that block while a large message arrives",
                 roles=("artwork",), thorough=thorough, timeout_s=120.0)
    async def run(w: ClientWorld, b: Bounds, j: Judgement) -> None:
        await w.start_client()
        if await hello_passed(w, j) is None:
            return
        answer = (await act(w, "artwork", bytes=size, fragment_bytes=ARTWORK_FRAGMENT))["sessions"][0]
        began = await w.until("the image's first fragment", lambda ev: next(
            (r for r in ev.select("send_begin", type="artwork/0") if r["t_us"] >= action_at(ev, "artwork")), None), 5)
        if not j.require(began is not None, "the server did not begin to send the image within 5 s"):
            return
        start = began["t_us"]
        message = answer["bytes"] + HEADER_SIZE
        whole = await w.until("the image", lambda ev: first_after(
            ev, start, direction="downstream", kind="binary", type=str(artwork_type(0)), size=message),
            time_window_s(b))
        await _watch(w, b, j, start, reading=False)  # a bulk transfer fills the socket buffers of any reader
        frames = -(-message // ARTWORK_FRAGMENT)
        if j.require(whole is not None, f"the client did not take the whole image within {time_window_s(b):g} s: "
                     "its last fragment never passed the proxy"):
            assert whole is not None
            j.require(whole.get("fragments", 1) == frames, f"the image passed in {whole.get('fragments', 1)} frames, "
                      f"not {frames}: the case did not test what it says")
            j.report("transfer (first fragment sent to last passing the proxy)", ms(whole["t_us"] - start), "ms")
            judge_reading(j, b, w.events(), whole["t_us"] + DRAIN_US)
        j.report("image bytes", answer["bytes"], "bytes")


_artwork_case("4.3", 2 * MiB, thorough=False)


PING_FRAMES = 8


@client_case("4.4", noise=LEGACY_FRAMES, title="Answers pings that come between the fragments of a message",
             description=f"Once audio flows, the server sends a stream/start (the current format again) in "
                         f"{PING_FRAMES} frames with a ping between each two.",
             expectation="The client answers the pings with pongs (at least the last one, RFC 6455 §5.5.3), keeps the "
                         "session (no 1002), goes on reading and sending client/time.",
             source=f"{RFC_FRAGMENTS}; RFC 6455 §5.5.2 — \"Upon receipt of a Ping frame, an endpoint MUST send a Pong "
                    "frame in response\"", roles=("player",))
async def pings_between_fragments(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    await act(w, "stream/start", frames=PING_FRAMES, pings=True)
    began = action_at(w.events(), "stream/start")
    await _watch(w, b, j, began)
    ev = w.events()
    if _passed(j, ev, began, "stream/start", PING_FRAMES, type="stream/start") is None:
        return
    pings = [r for r in ev.select("wire", direction="downstream", kind="ping") if r["t_us"] > began]
    if not j.require(len(pings) >= PING_FRAMES - 1, f"only {len(pings)} pings passed the proxy, not "
                     f"{PING_FRAMES - 1}: the case tested nothing"):
        return
    last = pings[PING_FRAMES - 2]
    pong = first_after(ev, last["t_us"], direction="upstream", kind="pong")
    took = None if pong is None else pong["t_us"] - last["t_us"]
    j.check("pong after the last ping between the fragments", None if took is None else ms(took), "<=",
            ms(b.client_pong_us), "ms", "client_pong_us",
            (last["t_us"], last["t_us"] + (took if took is not None else b.client_pong_us)))
    j.report("pongs", len([r for r in ev.select("wire", direction="upstream", kind="pong") if r["t_us"] > began]))


_artwork_case("4.5", 32 * MiB, thorough=True)
