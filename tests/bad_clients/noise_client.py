"""Negative controls for the client gate's Noise group: a small noise-profile player with one bug at a time.

    python tests/bad_clients/noise_client.py --url ws://... --bug BUG

Without a bug (`--bug none`) it behaves: client/init, the Noise handshake (each step
within 5 s, else it gives the connection up), server/hello → client/hello (player@v1,
unpaired access) → server/activate, then client/state `available` and client/time every
200 ms whatever the replies; every message it cannot accept (an AEAD failure, cleartext
after the switch, a malformed fragment sequence) closes the connection silently; it
reconnects with a backoff (0.5 s doubling to 4 s). Built on websockets and our sans-I/O
codec (harness/protocol/noise*.py), not on our probe.

Bugs (each should make the gate FAIL the case named):
  ignore-aead       takes every message the codec refuses (AEAD failure, cleartext, malformed
                    fragments) as noise and reads on: never closes                      (10.4)
  accept-cleartext  ignores a text message after the switch instead of closing; closes on
                    the rest as it should                                                (10.5)
  stall-on-bad-audio  an authentic audio message too short for its header stops its reading
                    for good (it still sends client/time); a header-only one is fine      (5.2)
  ignore-rehandshake  takes the server's re-handshake message 1 for a message it does not
                    know and ignores it: never answers                                   (10.11)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from harness.protocol import ConnectionFatal, ProtocolError, now_us
from harness.protocol import messages as m
from harness.protocol.noise import NoiseProfile

BUGS = ("none", "ignore-aead", "accept-cleartext", "stall-on-bad-audio", "ignore-rehandshake")
TIME_INTERVAL_S = 0.2
STEP_TIMEOUT_S = 5.0  # each handshake step (connection.md suggests 30 s; a test wants it short)
FORMAT = m.AudioFormat(codec="pcm", channels=2, sample_rate=48_000, bit_depth=16)


class Silent(Exception):
    """A silent failure: close without another message."""


async def recv(ws: Any, timeout: float | None = None) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


async def session(ws: Any, profile: NoiseProfile, bug: str) -> None:
    codec = profile.session("client")
    step = codec.handshake(None)  # client/init: the client speaks first
    while True:
        for wire in step.send:
            await ws.send(wire)
        if step.close:
            raise Silent(f"handshake: {step.error or step.server_error}")
        if codec.ready:
            break
        step = codec.handshake(await recv(ws, STEP_TIMEOUT_S))

    async def send(message: m.Message) -> None:
        for wire in codec.encode_messages(message):
            await ws.send(wire)

    async def decode(timeout: float | None) -> Any:
        while True:
            data = await recv(ws, timeout)
            if isinstance(data, str) and bug == "accept-cleartext":
                continue
            try:
                decoded = codec.decode(data)
                if isinstance(decoded, m.NoiseHandshake) and bug != "ignore-rehandshake":  # the server re-handshakes
                    step = codec.handshake(decoded)
                    if step.close:
                        raise Silent(f"re-handshake: {step.error}")
                    for wire in step.send:  # message 2, under the old keys
                        await ws.send(wire)
                    continue
                return decoded
            except ConnectionFatal as exc:
                if bug != "ignore-aead":
                    raise Silent(str(exc)) from None
            except ProtocolError as exc:  # a whole, authentic message of a shape it does not know: ignored
                if bug == "stall-on-bad-audio" and exc.message_type == "binary":
                    await asyncio.Event().wait()  # never set: it reads nothing more

    while not isinstance(await decode(STEP_TIMEOUT_S), m.NoiseServerHello):
        pass
    await send(m.NoiseClientHello(name="noise bad client", supported_roles=["player@v1"],
                                  player_support=m.NoisePlayerSupport(supported_formats=[FORMAT],
                                                                      buffer_capacity=1_000_000),
                                  supported_pair_methods={}, unpaired_access=m.UnpairedAccess(enabled=True)))
    while not isinstance(await decode(STEP_TIMEOUT_S), m.ServerActivate):
        pass
    await send(m.NoiseClientState(available=True, player=m.NoisePlayerState(
        volume=100, muted=False, output_delay_ms=0, required_lead_time_ms=0, min_buffer_ms=0,
        supported_commands=["volume", "mute"])))

    async def clock() -> None:
        while True:
            with contextlib.suppress(ProtocolError):  # refused between a re-handshake's message 1 and server/activate
                await send(m.ClientTime(client_transmitted=now_us()))
            await asyncio.sleep(TIME_INTERVAL_S)

    ticker = asyncio.create_task(clock())
    try:
        while True:
            await decode(None)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ticker


async def main(url: str, bug: str) -> None:
    profile = NoiseProfile()  # one identity for the whole run, like a device
    backoff = 0.5
    while True:
        try:
            async with connect(url, max_size=None, open_timeout=STEP_TIMEOUT_S) as ws:
                backoff = 0.5
                try:
                    await session(ws, profile, bug)
                except (Silent, TimeoutError) as exc:
                    print(f"closing silently: {exc}", flush=True)
                    await ws.close()
        except (OSError, WebSocketException, TimeoutError) as exc:
            print(f"connection lost: {exc!r}", flush=True)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 4.0)


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--bug", choices=BUGS, default="none")
    p.add_argument("--name", default="noise bad client")
    args = p.parse_args()
    loop = asyncio.new_event_loop()
    task = loop.create_task(main(args.url, args.bug))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    loop.close()
    sys.exit(0)


if __name__ == "__main__":
    run()
