"""The reference server in the `noise` profile, end to end over real sockets.

The client is our sans-I/O `noise` client side (`NoiseSession` + `NoiseClientFlow`)
over a plain websockets connection (`NoiseClient` below): the single-process
server and a 2-worker cluster, both profiles on one server, the refusals of
`--profiles`, a stalled handshake, a tampered transport message. Then the interop
acceptance test: aiosendspin 10.2.1's client against the reference server,
checked sample by sample (skipped, saying why, unless SENDSPIN_AIOSENDSPIN10_PYTHON
names a Python with aiosendspin[server]==10.2.1; see test_protocol_noise_interop.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from noise_support import aiosendspin10_python
from proxy_support import until
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from harness.probe import ProbeConfig
from harness.protocol import closecodes, now_us, watermark
from harness.protocol import messages as m
from harness.protocol.noise import SUITES, AudioChunk, Identity, NoiseProfile
from harness.protocol.noise_crypto import b64url_decode
from harness.protocol.noise_flow import NoiseClientFlow
from harness.scenario import Scenario
from harness.server_control import ServerControl

RATE = 48_000
CLIENT_PEER = Path(__file__).parent / "noise_peers" / "aiosendspin10_client.py"
WAIT_S = 15.0  # every wait for the server: a timeout, not a speed claim


@dataclass
class NoiseClient:
    """A `noise` player: handshake, client/hello, client/time, client/state with
    `available` and the player object; keeps every audio chunk and message type."""

    url: str
    suite: str = "25519_ChaChaPoly_SHA256"
    unpaired_access: bool = True
    available: bool = True  # in its first client/state (a player's clock may not be synchronized yet)
    profile: NoiseProfile = field(init=False)
    chunks: list[AudioChunk] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    activations: list[m.ServerActivate] = field(default_factory=list)
    server_id: str | None = None
    close_code: int | None = None
    close_reason: str | None = None

    def __post_init__(self) -> None:
        self.profile = NoiseProfile(suite=self.suite)  # type: ignore[arg-type]
        self.codec = self.profile.session("client")
        self.flow = NoiseClientFlow()
        self.ws: Connection | None = None
        self.closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def open(self, ws: Connection | None = None) -> None:
        """Connect (or take the connection the server dialled) and send client/init only."""
        self.ws = ws or await connect(self.url, open_timeout=WAIT_S, close_timeout=3, compression=None,
                                      max_size=None)
        for wire in self.codec.handshake(None).send:
            await self.ws.send(wire)

    async def start(self, ws: Connection | None = None) -> None:
        """The whole handshake, then a reader that answers as a player does."""
        await self.open(ws)
        assert self.ws is not None
        while not self.codec.ready:
            step = self.codec.handshake(await asyncio.wait_for(self.ws.recv(), WAIT_S))
            assert not step.close, step
            for wire in step.send:
                await self.ws.send(wire)
        self.server_id = self.codec.peer_id
        self._reader = asyncio.create_task(self._read())

    async def send(self, message: m.Message) -> None:
        assert self.ws is not None
        self.flow.sent(message)
        for wire in self.codec.encode_messages(message):
            await self.ws.send(wire)

    async def send_state(self, available: bool) -> None:
        await self.send(m.NoiseClientState(available=available, player=m.NoisePlayerState(
            volume=100, muted=False, output_delay_ms=0, required_lead_time_ms=100, min_buffer_ms=250,
            supported_commands=["volume", "mute"])))

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for wire in self.ws:
                message = self.codec.decode(wire)
                if message is None:
                    continue
                self.flow.receive(message)
                if isinstance(message, AudioChunk):
                    self.chunks.append(message)
                    continue
                self.received.append(getattr(message, "TYPE", "binary"))
                if isinstance(message, m.NoiseServerHello):
                    await self.send(m.NoiseClientHello(
                        name="noise test player", supported_roles=["player@v1", "metadata@v1"],
                        player_support=m.NoisePlayerSupport(supported_formats=[m.AudioFormat(
                            codec="pcm", channels=2, sample_rate=RATE, bit_depth=16)], buffer_capacity=2_000_000),
                        supported_pair_methods={"pairing_psk": {}},
                        unpaired_access=m.UnpairedAccess(enabled=self.unpaired_access)))
                elif isinstance(message, m.ServerActivate):
                    self.activations.append(message)
                    if len(self.activations) == 1:
                        await self.send(m.ClientTime(client_transmitted=now_us()))
                        await self.send_state(self.available)
        except ConnectionClosed:
            pass
        finally:
            self.close_code, self.close_reason = self.ws.close_code, self.ws.close_reason
            self.closed.set()

    async def until(self, what: str, predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                assert not self.closed.is_set(), f"closed ({self.close_code} {self.close_reason!r}) before {what}"
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


def continuous(chunks: list[AudioChunk]) -> list[str]:
    """What breaks the watermark's continuity: every sample once, in order, and each
    chunk's timestamp where its first sample's index puts it. Empty: continuous."""
    problems = []
    expected = None
    ts0 = index0 = None
    for k, chunk in enumerate(chunks):
        index = watermark.decode(bytes(chunk.payload), 2, 16)
        if any(index[1:] - index[:-1] != 1):
            problems.append(f"chunk {k}: samples out of order")
        if expected is not None and int(index[0]) != expected:
            problems.append(f"chunk {k}: starts at sample {int(index[0])}, expected {expected}")
        expected = int(index[-1]) + 1
        if ts0 is None:
            ts0, index0 = chunk.timestamp_us, int(index[0])
        elif abs(chunk.timestamp_us - ts0 - (int(index[0]) - index0) * 1_000_000 // RATE) > 1:
            problems.append(f"chunk {k}: timestamp {chunk.timestamp_us} does not follow the sample count")
    return problems


def _status(http: str) -> dict:
    with urllib.request.urlopen(f"{http}/api/status", timeout=5) as r:
        return json.loads(r.read())


# --- one process, both profiles -----------------------------------------------------------------


def test_noise_and_legacy_clients_on_one_server(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            legacy = await sc.probe(server.ready["url"], ProbeConfig(name="legacy"))
            client, syncing = NoiseClient(server.ready["url"]), NoiseClient(server.ready["url"], available=False)
            for c in (client, syncing):
                await c.start()
            await client.until("40 audio chunks", lambda: len(client.chunks) >= 40)
            # available: false first (clock not synchronized yet): no audio, and the group plays on
            await syncing.until("stream/start", lambda: "stream/start" in syncing.received)
            await asyncio.sleep(0.3)  # audio, were it sent, is due 0.3 s ahead: it would be here
            assert not syncing.chunks and "stream/end" not in syncing.received
            await syncing.send_state(True)
            await syncing.until("10 audio chunks", lambda: len(syncing.chunks) >= 10)
            assert not continuous(syncing.chunks), continuous(syncing.chunks)
            await syncing.close()
            assert client.received[:2] == ["server/hello", "server/activate"], client.received
            first = client.activations[0]
            assert first.activities == ["playback"] and first.active_roles == ["player@v1"]
            assert "group/update" in client.received and "stream/start" in client.received
            assert not continuous(client.chunks), continuous(client.chunks)
            assert all(0 < c.send_ahead_us < 5_000_000 for c in client.chunks)
            status = await asyncio.to_thread(_status, server.ready["http"])
            assert client.server_id == status["server_id"] and status["profiles"] == ["legacy", "noise"]
            # client/leave: a solo group, stopped (messaging.md); then goodbye, and the server closes.
            await client.send(m.ClientLeave())
            await client.until("stream/end", lambda: "stream/end" in client.received)
            await client.send(m.NoiseClientGoodbye(reason="shutdown"))
            await asyncio.wait_for(client.closed.wait(), WAIT_S)
            assert client.close_code == closecodes.NORMAL
            assert legacy.audio.samples > 0 and legacy.audio.gaps == 0 and not legacy.errors
            accepts = {r["session"]: r["profile"] for r in sc.events().select("accept", proc="server")}
            assert sorted(accepts.values()) == ["legacy", "noise", "noise"], accepts

    run(body())


# --- a cluster: one identity, every worker ----------------------------------------------------


def test_a_cluster_speaks_noise_on_every_worker_with_one_server_id(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            key_file = tmp_path / "server.key"
            server = await sc.server("--workers", "2", "--identity", str(key_file))
            clients = [NoiseClient(w["url"], suite=suite) for w, suite in zip(server.ready["workers"], SUITES,
                                                                                strict=True)]
            for c in clients:
                await c.start()
            for c in clients:
                await c.until("30 audio chunks", lambda c=c: len(c.chunks) >= 30)
                assert not continuous(c.chunks), continuous(c.chunks)
            status = await asyncio.to_thread(_status, server.ready["http"])
            assert status["server_id"] is not None
            assert [c.server_id for c in clients] == [status["server_id"]] * 2
            # the coordinator made the key in the file, private to its owner, and handed it on
            assert key_file.stat().st_mode & 0o777 == 0o600
            assert Identity(b64url_decode(key_file.read_text().strip(), 32)).peer_id == status["server_id"]
            for c in clients:
                await c.close()

    run(body())


# --- server-initiated: the server dials, the client still sends client/init -----------------------------


def test_the_server_dials_a_listening_noise_client(run, tmp_path: Path) -> None:
    async def body() -> None:
        dialled: list[NoiseClient] = []

        async def handler(ws: ServerConnection) -> None:
            client = NoiseClient("")
            dialled.append(client)
            await client.start(ws)
            await client.closed.wait()

        async with serve(handler, "127.0.0.1", 0, compression=None) as listening, Scenario(tmp_path) as sc:
            port = listening.sockets[0].getsockname()[1]
            await sc.server("--dial", f"ws://127.0.0.1:{port}/sendspin")
            async with asyncio.timeout(WAIT_S):
                while not dialled:
                    await asyncio.sleep(0.02)
            client = dialled[0]
            # Its frames are masked (the server is the WebSocket client here): websockets would refuse others.
            await client.until("30 audio chunks", lambda: len(client.chunks) >= 30)
            assert not continuous(client.chunks), continuous(client.chunks)
            await client.send(m.NoiseClientGoodbye(reason="shutdown"))  # and no redial
            await asyncio.wait_for(client.closed.wait(), WAIT_S)
            accept = sc.events().select("accept", proc="server")
            assert [(r["dialled"], r["profile"]) for r in accept] == [(True, "noise")]

    run(body())


# --- refusals ---------------------------------------------------------------------------------


def test_profiles_refuse_the_other_revision(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            noise_only = await sc.server("--profiles", "noise")
            legacy_only = await sc.server("--profiles", "legacy")
            hello = json.dumps({"type": "client/hello", "payload": {
                "client_id": "old", "name": "old", "version": 1, "supported_roles": ["player@v1"]}})
            async with connect(noise_only.ready["url"], open_timeout=WAIT_S) as ws:
                await ws.send(hello)
                answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
                assert answer == {"type": "server/error", "payload": {"reason": "malformed"}}
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), WAIT_S)
                assert ws.close_code == closecodes.PROTOCOL_ERROR and "only the noise profile" in ws.close_reason
            client = NoiseClient(legacy_only.ready["url"])
            await client.open()
            assert client.ws is not None
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(client.ws.recv(), WAIT_S)
            assert client.ws.close_code == closecodes.PROTOCOL_ERROR
            assert "does not speak the noise profile" in client.ws.close_reason
            # A noise client is served by the noise-only server; one without unpaired access is
            # activated for nothing (the Sentinel PSK allows playback only with it: messaging.md).
            good = NoiseClient(noise_only.ready["url"])
            idle = NoiseClient(noise_only.ready["url"], unpaired_access=False)
            for c in (good, idle):
                await c.start()
            await good.until("audio", lambda: len(good.chunks) >= 5)
            await idle.until("server/activate", lambda: bool(idle.activations))
            assert (idle.activations[0].activities, idle.activations[0].active_roles) == ([], [])
            await asyncio.sleep(0.3)
            assert not idle.chunks and "stream/start" not in idle.received
            for c in (good, idle):
                await c.close()

    run(body())


@pytest.mark.parametrize(("args", "message"), [
    (["--profiles", "legacy,tls"], "--profiles takes a comma-separated list of legacy, noise, got 'legacy,tls'"),
    (["--identity", "{bad}"], "not a base64url X25519 private key"),
])
def test_cli_names_a_bad_profile_or_identity(tmp_path: Path, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    result = subprocess.run([sys.executable, "-m", "reference_server", *(a.format(bad=bad) for a in args)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and message in result.stderr, result.stderr


# --- failures that end one session silently --------------------------------------------------------


def test_a_handshake_stalled_after_message_1_is_closed_silently_within_the_bound(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--handshake-timeout", "0.5")
            client = NoiseClient(server.ready["url"])
            await client.open()
            assert client.ws is not None
            got = [await asyncio.wait_for(client.ws.recv(), WAIT_S) for _ in range(2)]
            assert [json.loads(g)["type"] for g in got] == ["server/init", "noise/handshake"]
            sent_us = now_us()
            with pytest.raises(ConnectionClosed):  # no message 2: the server gives up
                await asyncio.wait_for(client.ws.recv(), WAIT_S)
            waited_s = (now_us() - sent_us) / 1e6
            assert client.ws.close_code == closecodes.NORMAL and client.ws.close_reason == ""
            assert waited_s >= 0.45, f"closed after {waited_s:.2f} s, before the 0.5 s bound"
            reject = sc.events().select("reject", proc="server", action="close")
            assert [r["rule"] for r in reject] == ["handshake stalled: no Noise message 2 within 0.5 s"]

    run(body())


def test_a_tampered_transport_message_closes_only_its_session(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            victim, bystander = NoiseClient(server.ready["url"]), NoiseClient(server.ready["url"])
            for c in (victim, bystander):
                await c.start()
                await c.until("audio", lambda c=c: len(c.chunks) >= 5)
            assert victim.ws is not None
            wire = bytearray(victim.codec.encode(m.ClientTime(client_transmitted=now_us())))
            wire[-1] ^= 0x01  # one bit of the AEAD tag
            await victim.ws.send(bytes(wire))
            tampered = len(bystander.chunks)
            await asyncio.wait_for(victim.closed.wait(), WAIT_S)
            assert victim.close_code == closecodes.NORMAL and victim.close_reason == ""
            await bystander.until("20 more chunks", lambda: len(bystander.chunks) >= tampered + 20)
            assert not continuous(bystander.chunks), continuous(bystander.chunks)
            await bystander.close()
            rejects = sc.events().select("reject", proc="server", action="close")
            assert len(rejects) == 1 and rejects[0]["code"] == closecodes.NORMAL, rejects

    run(body())


async def noise_server(sc: Scenario, via: str) -> tuple[Any, str]:
    """A noise-only reference server and the URL a client uses: its own (`direct`), or
    that of a proxy terminating Noise in front of it (`terminating-proxy`)."""
    server = await sc.server("--profiles", "noise")
    url = server.ready["url"]
    if via == "terminating-proxy":
        proxy = await sc.proxy([url], "--noise", "terminate")
        url = proxy.url + urlsplit(url).path
    return server, url


# --- interop: aiosendspin 10.2.1's client ----------------------------------------------------------


@pytest.mark.parametrize("via", ["direct", "terminating-proxy"])
@pytest.mark.parametrize("suite", SUITES)
def test_aiosendspin_10_2_1_client_streams_from_the_reference_server(run, tmp_path: Path, suite: str,
                                                                     via: str) -> None:
    """Directly, and through the proxy terminating Noise (`--noise terminate`): a handshake
    with each side, every message opened and sealed again by the proxy."""
    python = aiosendspin10_python()
    want = 60

    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            _, url = await noise_server(sc, via)
            proc = await asyncio.create_subprocess_exec(
                python, str(CLIENT_PEER), url, suite, str(want), "watermark",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), 90)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, err.decode()[-2000:]
            lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
            chunks = lines[-1]["chunks"]
            assert len(chunks) >= want, f"{len(chunks)} chunks reached its audio listener"
            # Every sample, checked in the peer: each chunk's frames are consecutive watermark indices;
            # here: each chunk starts where the last ended, at the time its first index says.
            ts0, first0 = chunks[0][0], chunks[0][3]
            expected = None
            for ts, send_ahead, size, first, consecutive in chunks:
                assert consecutive, (ts, first)
                assert expected is None or first == expected, (first, expected)
                assert abs(ts - ts0 - (first - first0) * 1_000_000 // RATE) <= 1, (ts, first)
                assert 0 < send_ahead < 5_000_000, send_ahead
                expected = first + size // 4
            accept = sc.events().select("accept", proc="server")
            assert [r["profile"] for r in accept] == ["noise"]
            recv = [r["type"] for r in sc.events().select("recv", proc="server")]
            assert recv[:3] == ["client/init", "noise/handshake", "client/hello"], recv[:5]
            assert "client/state" in recv
            if via == "terminating-proxy":
                (established,) = sc.events().select("noise_terminate", proc="proxy", stage="established")
                assert established["suite"] == suite and established["server_id"] != established["proxy_server_id"]
            print(f"{suite} {via}: {len(chunks)} chunks, {sum(c[2] for c in chunks) // 4} frames, every sample in "
                  f"order; send_ahead {min(c[1] for c in chunks)}..{max(c[1] for c in chunks)} µs", file=sys.stderr)

    run(body())


# --- the whole stack: the probe, the fault proxy (opaque) and a cluster ------------------------------------


def test_the_noise_probe_streams_through_the_proxy_and_survives_its_worker_killed(run, tmp_path: Path) -> None:
    """The noise session end to end through our own parts: the proxy relays it opaquely
    (a network fault acts, a message fault is refused for it), and after its worker is
    SIGKILLed the probe reconnects through the balancer with a new handshake to the same
    cluster identity and streams again."""
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server, proxy = await sc.cluster_behind_proxy(2)
            probe = await sc.probe(proxy.url, ProbeConfig(name="noisy", profile="noise", reconnect=True))
            await until(lambda: probe.audio.samples >= 2 * RATE, WAIT_S, "2 s of audio")
            latency = await proxy.add({"type": "latency", "name": "lat", "latency_ms": 20})
            assert "not_applied" not in latency, latency
            dropped = await proxy.add({"type": "drop", "name": "drop-time", "json_type": "server/time"})
            (refused,) = dropped["not_applied"]
            assert (refused["profile"], refused["mode"]) == ("noise", "noise-opaque"), refused
            await proxy.applied("lat")
            before = probe.audio.samples
            await until(lambda: probe.audio.samples >= before + RATE, WAIT_S, "audio through the latency")
            assert probe.audio.gaps == 0 and not probe.errors
            await proxy.reset()

            (conn,) = await proxy.connections()
            first_port = probe.local_port
            await proxy.add({"type": "worker_crash", "action": "kill", "upstream": conn["upstream_index"]})
            await until(lambda: probe.in_session and probe.local_port != first_port, WAIT_S, "a new connection")
            after = probe.audio.samples
            await until(lambda: probe.audio.samples >= after + RATE, WAIT_S, "audio again")
            handshakes = sc.events().select("noise_handshake", proc="noisy")
            assert len(handshakes) == 2 and {h["server_id"] for h in handshakes} == {
                (await asyncio.to_thread(_status, server.ready["http"]))["server_id"]}, handshakes
            await sc.close_probes()

    run(body(), 90)



@pytest.mark.parametrize("via", ["direct", "terminating-proxy"])
def test_a_server_initiated_rehandshake_keeps_the_session_streaming(run, tmp_path: Path, via: str) -> None:
    """The server re-handshakes (`noise/rehandshake`): message 1 under the old keys, nothing
    else until the client's message 2, then server/activate under the new keys, and the
    stream goes on without a gap. Through the terminating proxy the proxy answers it: the
    client keeps its keys and sees only the new server/activate."""
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server, url = await noise_server(sc, via)
            probe = await sc.probe(url, ProbeConfig(name="noisy", profile="noise"))
            await until(lambda: probe.audio.samples >= RATE, WAIT_S, "1 s of audio")
            answer = await ServerControl(server.ready["control"]).act("noise/rehandshake")
            assert len(answer["sessions"]) == 1, answer
            before = probe.audio.samples
            await until(lambda: probe.audio.samples >= before + RATE, WAIT_S, "audio after the re-handshake")
            assert probe.audio.gaps == 0 and probe.audio.duplicates == 0 and not probe.errors
            ev = sc.events()
            recv = [r["type"] for r in ev.select("recv", proc="server")]
            assert recv.count("noise/handshake") == 2, recv  # message 2 of the handshake and of the re-handshake
            sent = [r["type"] for r in ev.select("send_end", proc="server")]
            assert sent.count("server/activate") == 2, sent
            rehandshakes = [r for r in ev.select("noise_handshake", proc="noisy") if r["rehandshake"]]
            if via == "direct":
                assert len(rehandshakes) == 1
            else:
                assert not rehandshakes  # the proxy's to answer
                assert len(ev.select("noise_terminate", proc="proxy", stage="rehandshake")) == 1
            await sc.close_probes()

    run(body(), 60)
