"""Interop at the protocol level: aiosendspin 10.2.1's Noise server
(`allow_unencrypted=False`) on loopback, driven by our sans-I/O `noise` client
(NoiseSession + NoiseClientFlow) over a plain websockets connection, in both
suites: handshake, server/hello, client/hello, server/activate, client/time,
client/state with `available`, a stream of watermark audio with the 13-byte
header, stream/end, client/leave, client/goodbye.

aiosendspin 10.2.1 is not in the project's venv (pyproject pins 6.1.1 for the
legacy interop, and one venv cannot hold both), so the server runs as a
subprocess (tests/noise_peers/aiosendspin10_server.py) under the interpreter
named by SENDSPIN_AIOSENDSPIN10_PYTHON, e.g. a throwaway venv made with

    python3.12 -m venv /tmp/aios1021
    /tmp/aios1021/bin/pip install 'aiosendspin[server]==10.2.1'
    export SENDSPIN_AIOSENDSPIN10_PYTHON=/tmp/aios1021/bin/python

Without it the test is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from harness.protocol import ConnectionFatal
from harness.protocol import messages as m
from harness.protocol.clock import now_us
from harness.protocol.noise import SUITES, AudioChunk, NoiseProfile
from harness.protocol.noise_flow import NoiseClientFlow

PEER = Path(__file__).parent / "noise_peers" / "aiosendspin10_server.py"
ENV = "SENDSPIN_AIOSENDSPIN10_PYTHON"
RATE = 48_000
SECONDS = 1.5


def _interpreter() -> str:
    python = os.environ.get(ENV)
    if not python:
        pytest.skip(f"{ENV} is not set: it names a Python with aiosendspin[server]==10.2.1 "
                    "(the project's venv pins 6.1.1); see this file's docstring")
    try:
        version = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('aiosendspin'))"],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
    except OSError as exc:
        pytest.skip(f"{ENV}={python} cannot run: {exc}")
    if version != "10.2.1":
        pytest.skip(f"{ENV}={python} has aiosendspin {version or 'missing'}, not 10.2.1")
    return python


def _frame_indices(pcm: bytes) -> list[int]:
    """The peer's watermark: frame n's left sample is n's low 16 bits, its right the high 16."""
    out = []
    for i in range(0, len(pcm), 4):
        low = int.from_bytes(pcm[i : i + 2], "little")
        high = int.from_bytes(pcm[i + 2 : i + 4], "little")
        out.append(low | high << 16)
    return out


async def _session(python: str, suite: str) -> dict:
    profile = NoiseProfile(suite=suite)  # type: ignore[arg-type]
    proc = await asyncio.create_subprocess_exec(
        python, str(PEER), profile.identity.peer_id, str(SECONDS),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    report: dict = {"chunks": [], "received": [], "notes": []}
    try:
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))  # type: ignore[union-attr]
        codec, flow = profile.session("client"), NoiseClientFlow()
        async with connect(ready["url"], open_timeout=10, close_timeout=3, compression=None,
                           max_size=None) as ws:

            async def send(message: m.Message) -> None:
                flow.sent(message)
                for wire in codec.encode_messages(message):
                    await ws.send(wire)

            for wire in codec.handshake(None).send:
                await ws.send(wire)
            while not codec.ready:
                step = codec.handshake(await asyncio.wait_for(ws.recv(), 10))
                for wire in step.send:
                    await ws.send(wire)
                assert not step.close, step
            report["psk_category"] = codec.psk.category  # type: ignore[union-attr]
            report["server_id_matches"] = codec.peer_id == ready["server_id"]
            async with asyncio.timeout(30):
                while True:
                    message = codec.decode(await ws.recv())
                    if message is None:
                        continue
                    flow.receive(message)
                    if isinstance(message, AudioChunk):
                        report["chunks"].append((message.timestamp_us, message.send_ahead_us, bytes(message.payload)))
                        continue
                    report["received"].append(message.TYPE)
                    if isinstance(message, m.NoiseServerHello):
                        await send(m.NoiseClientHello(
                            name="harness noise probe", supported_roles=["player@v1"],
                            player_support=m.NoisePlayerSupport(supported_formats=[m.AudioFormat(
                                codec="pcm", channels=2, sample_rate=RATE, bit_depth=16)], buffer_capacity=2_000_000),
                            supported_pair_methods={"pairing_psk": {}}, unpaired_access=m.UnpairedAccess(enabled=True)))
                    elif isinstance(message, m.ServerActivate) and flow.activations == 1:
                        report["first_activate"] = message
                        await send(m.ClientTime(client_transmitted=now_us()))
                    elif isinstance(message, m.ServerTime) and "server_time" not in report:
                        report["server_time"] = message
                        await send(m.NoiseClientState(available=True, player=m.NoisePlayerState(
                            volume=100, muted=False, output_delay_ms=0, required_lead_time_ms=100,
                            min_buffer_ms=250, supported_commands=["volume", "mute"])))
                    elif isinstance(message, m.StreamEnd):
                        break
            await send(m.ClientLeave())
            await send(m.NoiseClientGoodbye(reason="shutdown"))
            # The server should close after a goodbye; anything it still sends must decrypt.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    async for wire in ws:
                        codec.decode(wire)
            report["closed_by_server"] = ws.close_code is not None
        proc.stdin.close()  # type: ignore[union-attr]
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        report["peer_out"], report["peer_err"] = out.decode(), err.decode()
        report["returncode"] = proc.returncode
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return report


@pytest.mark.parametrize("suite", SUITES)
def test_our_noise_client_against_aiosendspin_10_2_1(suite: str) -> None:
    python = _interpreter()
    try:
        report = asyncio.run(asyncio.wait_for(_session(python, suite), 120))
    except ConnectionFatal as exc:
        pytest.fail(f"the connection broke a rule that closes it: {exc}")
    assert report["returncode"] == 0, report["peer_err"][-2000:]
    assert report["psk_category"] == "sn" and report["server_id_matches"]
    assert report["closed_by_server"], "the server did not close after client/goodbye"
    assert report["received"][:2] == ["server/hello", "server/activate"], report["received"]
    assert report["first_activate"].active_roles == ["player@v1"]
    assert "stream/start" in report["received"] and report["received"][-1] == "stream/end"
    streamed = json.loads(report["peer_out"].splitlines()[-1])["streamed"]
    chunks = report["chunks"]
    assert chunks, report["received"]
    # Every sample once and in order; timestamps follow the sample count; send_ahead a real lead.
    indices = [i for _, _, pcm in chunks for i in _frame_indices(pcm)]
    assert indices == list(range(streamed)), f"{len(indices)} frames, first {indices[:3]}, last {indices[-3:]}"
    ts0 = chunks[0][0]
    first = 0
    for ts, send_ahead, pcm in chunks:
        assert ts - ts0 - first * 1_000_000 // RATE in (0, 1), (ts, first)
        assert 0 < send_ahead < 5_000_000, send_ahead
        first += len(pcm) // 4
    print(f"{suite}: {len(chunks)} chunks, {streamed} frames, send_ahead {min(c[1] for c in chunks)}.."
          f"{max(c[1] for c in chunks)} µs, received {report['received']}, "
          f"closed by the server after the goodbye: {report['closed_by_server']}", file=sys.stderr)
