"""The probe in the `noise` profile, over real sockets on 127.0.0.1.

Against a minimal Noise server built on our sans-I/O server side
(tests/noise_peers/probe_noise_server.py): both suites; the probe dials, and a
server dials the listening probe (client/init still first, the server still the
Noise initiator); watermark audio continuous, its 13-byte header's timestamp and
`send_ahead` in the probe's `audio` events, judged by the same checkers as legacy;
a server-initiated re-handshake survived; a server that drops the connection
silently, and a tampered ciphertext (the probe closes), each followed by a
reconnect with a new handshake. Then the acceptance interop: the probe against
aiosendspin 10.2.1's server (skipped, saying why, unless SENDSPIN_AIOSENDSPIN10_PYTHON
names a venv with it; see tests/test_protocol_noise_interop.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from noise_peers.probe_noise_server import CHUNK_FRAMES, RATE, ProbeNoiseServer
from noise_support import aiosendspin10_python
from websockets.asyncio.server import serve

from harness import checkers
from harness.events import Events
from harness.probe import ProbeClient, ProbeConfig
from harness.probe_cli import parse_args
from harness.protocol import EventLog
from harness.protocol import messages as m
from harness.protocol.clock import now_us
from harness.protocol.noise import SUITES, Identity
from harness.settings import Bounds

PEER = Path(__file__).parent / "noise_peers" / "aiosendspin10_server.py"
DIALER = Path(__file__).parent / "noise_peers" / "probe_aiosendspin10_dialer.py"


def _records(path: Path, event: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


def _config(suite: str = SUITES[0], **kw: Any) -> ProbeConfig:
    return ProbeConfig(**{"profile": "noise", "suite": suite, "roles": ["player@v1"], "time_interval_s": 0.05, **kw})


async def _stream(probe: ProbeClient, timeout: float = 15) -> None:
    """Until the stream ends (stream/end)."""
    await probe.wait_type(m.StreamEnd, timeout)


def _check_audio(log: Path, chunks: int) -> list[dict[str, Any]]:
    """Every chunk once, in order, timestamps following the sample count, send_ahead the lead it had."""
    audio = _records(log, "audio")
    assert len(audio) == chunks, f"{len(audio)} audio events, expected {chunks}"
    assert [r["first"] for r in audio] == [k * CHUNK_FRAMES for k in range(chunks)]
    assert not any(r["gap"] or r["dup"] or r["reorder"] or r["corrupt"] for r in audio)
    ts0 = audio[0]["ts_us"]
    for k, r in enumerate(audio):
        assert r["ts_us"] - ts0 == k * CHUNK_FRAMES * 1_000_000 // RATE
        # the server's lead, stamped at transmission: at least the lead left when the probe read it
        # (our server and the probe share a clock), 0 once a starved server sent it late (saturated)
        assert max(0, r["ts_us"] - r["t_us"]) <= r["send_ahead_us"] < 1_000_000, r
    return audio


# --- against our own sans-I/O server side ---------------------------------------------------------


async def _dialled_session(tmp_path: Path, suite: str) -> tuple[ProbeNoiseServer, ProbeClient, int]:
    server = ProbeNoiseServer(chunks=40)
    ws_server, url = await server.serve()
    log = EventLog(tmp_path / "probe.jsonl", "probe")
    probe = ProbeClient(url, _config(suite), log)
    try:
        await probe.connect()
        await _stream(probe)
        end_us = now_us()
        await probe.close()
        await asyncio.wait_for(server.connections[0].ended.wait(), 5)
    finally:
        await probe.close(goodbye=False)
        ws_server.close()
        await ws_server.wait_closed()
        log.close()
    return server, probe, end_us


@pytest.mark.parametrize("suite", SUITES)
def test_the_probe_dials_and_streams_in_noise(tmp_path: Path, run: Callable[..., Any], suite: str) -> None:
    server, probe, end_us = run(_dialled_session(tmp_path, suite), 60)
    conn = server.connections[0]
    assert conn.error is None, conn.error
    assert conn.client_id == probe.config.client_id and conn.suite == suite
    assert conn.received[0] == "client/hello", conn.received
    assert conn.states and conn.states[0].available, conn.states
    assert conn.received[-2:] == ["client/leave", "client/goodbye"], conn.received
    log = tmp_path / "probe.jsonl"
    (hs,) = _records(log, "noise_handshake")
    assert hs["suite"] == suite and hs["psk_category"] == "sn" and hs["server_id"] == server.server_id
    assert not hs["rehandshake"]
    _check_audio(log, 40)
    # The checkers read the same events as in legacy.
    events = Events.load(tmp_path)
    bounds = Bounds(time_reply_grace_us=300_000)  # a short session: replies are due within 0.3 s here
    verdicts = [checkers.audio_intact(events, "probe", bounds, 40 * CHUNK_FRAMES / RATE),
                checkers.session_alive(events, "probe", bounds, end_us)]
    assert all(verdicts), [v.explain() for v in verdicts]
    assert probe.close_code == 1000
    sent = [r["type"] for r in _records(log, "send")]
    assert sent[:3] == ["client/init", "noise/handshake", "client/hello"] and "client/state" in sent, sent


async def _listening_session(tmp_path: Path) -> tuple[ProbeNoiseServer, ProbeClient]:
    """Server-initiated: the probe listens, the server dials it."""
    server = ProbeNoiseServer(chunks=20)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    log = EventLog(tmp_path / "probe.jsonl", "probe")
    probe = ProbeClient(f"ws://127.0.0.1:{port}/sendspin", _config(), log)
    loop = asyncio.get_running_loop()
    dial = asyncio.create_task(server.dial(f"ws://127.0.0.1:{port}/sendspin"))
    try:
        with listener:
            sock, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
        await probe.accept(sock, "/sendspin")
        await _stream(probe)
        await probe.close()
        await asyncio.wait_for(dial, 10)
    finally:
        await probe.close(goodbye=False)
        dial.cancel()
        await asyncio.gather(dial, return_exceptions=True)
        log.close()
    return server, probe


def test_a_server_dials_the_listening_probe_in_noise(tmp_path: Path, run: Callable[..., Any]) -> None:
    server, probe = run(_listening_session(tmp_path), 60)
    conn = server.connections[0]
    assert conn.error is None, conn.error
    assert conn.client_id == probe.config.client_id
    assert conn.received[-2:] == ["client/leave", "client/goodbye"], conn.received
    log = tmp_path / "probe.jsonl"
    assert _records(log, "accepted") and _records(log, "noise_handshake")
    _check_audio(log, 20)


async def _scripted(tmp_path: Path, server: ProbeNoiseServer, until: Callable[[ProbeClient], bool],
                    **kw: Any) -> ProbeClient:
    ws_server, url = await server.serve()
    log = EventLog(tmp_path / "probe.jsonl", "probe")
    probe = ProbeClient(url, _config(**kw), log)
    try:
        await probe.connect()
        async with asyncio.timeout(20):
            while not until(probe):
                await asyncio.sleep(0.02)
        await probe.close()
    finally:
        await probe.close(goodbye=False)
        ws_server.close()
        await ws_server.wait_closed()
        log.close()
    return probe


def _stream_ends(n: int) -> Callable[[ProbeClient], bool]:
    return lambda probe: sum(isinstance(x, m.StreamEnd) for x in probe.messages) >= n


def test_the_probe_survives_a_server_initiated_rehandshake(tmp_path: Path, run: Callable[..., Any]) -> None:
    server = ProbeNoiseServer(chunks=30, rehandshake_after=10)
    probe = run(_scripted(tmp_path, server, _stream_ends(1)), 60)
    conn = server.connections[0]
    assert conn.error is None, conn.error
    assert conn.rehandshakes == 1 and conn.sent_chunks == 30
    assert len(server.connections) == 1
    log = tmp_path / "probe.jsonl"
    handshakes = _records(log, "noise_handshake")
    assert [h["rehandshake"] for h in handshakes] == [False, True], handshakes
    assert [r["active_roles"] for r in _records(log, "recv") if r["type"] == "server/activate"] == \
        [["player@v1"], ["player@v1"]]
    _check_audio(log, 30)  # under the new keys too, nothing lost
    # every client/time was answered, those that crossed the re-handshake after its server/activate
    answered = {r["client_transmitted"] for r in _records(log, "recv") if r["type"] == "server/time"}
    sent = [r["client_transmitted"] for r in _records(log, "send") if r["type"] == "client/time"]
    assert set(sent[:-3]) <= answered
    assert conn.received[-2:] == ["client/leave", "client/goodbye"], conn.received
    assert not _records(log, "reject")
    assert probe.close_code == 1000


def test_a_silent_drop_makes_the_probe_reconnect_with_a_new_handshake(tmp_path: Path,
                                                                       run: Callable[..., Any]) -> None:
    server = ProbeNoiseServer(chunks=12, drop_after=6)
    run(_scripted(tmp_path, server, _stream_ends(1), reconnect=True), 60)
    assert len(server.connections) == 2, [c.received for c in server.connections]
    assert server.connections[1].error is None and server.connections[1].sent_chunks == 12
    assert server.connections[0].client_id == server.connections[1].client_id  # one identity
    log = tmp_path / "probe.jsonl"
    assert _records(log, "close")[0]["code"] == 1006
    assert _records(log, "reconnected")
    assert len(_records(log, "noise_handshake")) == 2  # a new codec, new keys
    audio = _records(log, "audio")
    assert [r["first"] for r in audio] == [k * CHUNK_FRAMES for k in (*range(6), *range(12))]
    assert not any(r["gap"] or r["dup"] or r["corrupt"] for r in audio)


def test_a_tampered_ciphertext_closes_silently_and_the_probe_reconnects(tmp_path: Path,
                                                                        run: Callable[..., Any]) -> None:
    server = ProbeNoiseServer(chunks=12, tamper_after=4)
    run(_scripted(tmp_path, server, _stream_ends(1), reconnect=True), 60)
    log = tmp_path / "probe.jsonl"
    (reject,) = _records(log, "reject")
    assert reject["action"] == "close" and reject["type"] == "noise", reject
    first = server.connections[0]
    assert "client/goodbye" not in first.received  # silent: no Sendspin message on the way out
    assert [r["first"] for r in _records(log, "audio")][:4] == [k * CHUNK_FRAMES for k in range(4)]
    assert len(server.connections) == 2 and server.connections[1].sent_chunks == 12
    assert len(_records(log, "noise_handshake")) == 2


def test_a_message_in_sendspin_fragments_is_reassembled(tmp_path: Path, run: Callable[..., Any]) -> None:
    server = ProbeNoiseServer(chunks=4, big_state_bytes=200_000)
    probe = run(_scripted(tmp_path, server, _stream_ends(1)), 60)
    (state,) = [x for x in probe.messages if isinstance(x, m.NoiseServerState)]
    assert state.metadata == {"title": "x" * 200_000}
    (record,) = [r for r in _records(tmp_path / "probe.jsonl", "recv") if r["type"] == "server/state"]
    assert record["fragments"] == 4 and record["bytes"] > 200_000, record  # four transport messages, one message
    _check_audio(tmp_path / "probe.jsonl", 4)


def test_the_dead_session_watchdog_works_in_noise(tmp_path: Path, run: Callable[..., Any]) -> None:
    server = ProbeNoiseServer(chunks=24, deaf=True)  # 0.6 s of audio: the watchdog fires first
    run(_scripted(tmp_path, server, _stream_ends(1), reconnect=True, dead_session_s=0.3), 60)
    log = tmp_path / "probe.jsonl"
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "dead_session" in events and events.index("dead_session") < events.index("reconnected"), events
    assert len(server.connections) == 2 and server.connections[1].sent_chunks == 24
    assert len(_records(log, "noise_handshake")) == 2


async def _refused(tmp_path: Path) -> tuple[str, list[str]]:
    """A server that answers client/init with server/error and closes."""
    async def handler(ws: Any) -> None:
        await ws.recv()
        await ws.send('{"type":"server/error","payload":{"reason":"unsupported_version"}}')
        await ws.close()

    async with serve(handler, "127.0.0.1", 0, compression=None) as ws_server:
        log = EventLog(tmp_path / "probe.jsonl", "probe")
        probe = ProbeClient(f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}/", _config(), log)
        try:
            with pytest.raises(ConnectionError) as refused:
                await probe.connect()
        finally:
            await probe.close(goodbye=False)
            log.close()
    return str(refused.value), [r["type"] for r in _records(tmp_path / "probe.jsonl", "send")]


def test_a_server_error_ends_the_attempt_naming_its_reason(tmp_path: Path, run: Callable[..., Any]) -> None:
    error, sent = run(_refused(tmp_path), 30)
    assert "unsupported_version" in error and "Noise handshake" in error, error
    assert sent == ["client/init"], sent


def test_probe_config_and_cli_options_for_the_profile() -> None:
    identity = Identity.generate()
    config = ProbeConfig(profile="noise", identity=identity)
    assert config.client_id == identity.peer_id and config.suite == "25519_ChaChaPoly_SHA256"
    assert ProbeConfig(profile="noise").client_id != ProbeConfig(profile="noise").client_id  # fresh keys
    assert ProbeConfig().profile == "legacy"
    with pytest.raises(ValueError, match="unknown profile 'tls'"):
        ProbeConfig(profile="tls")
    with pytest.raises(ValueError, match="unknown suite"):
        ProbeConfig(profile="noise", suite="25519_ChaChaPoly_BLAKE2s")
    with pytest.raises(ValueError, match="the client_id is the identity's public key"):
        ProbeConfig(profile="noise", client_id="kitchen")
    args = parse_args(["--url", "ws://127.0.0.1:1/sendspin", "--profile", "noise", "--suite", "25519_AESGCM_SHA256"])
    assert (args.profile, args.suite) == ("noise", "25519_AESGCM_SHA256")
    assert parse_args(["--url", "ws://127.0.0.1:1/x"]).profile == "legacy"


@pytest.mark.parametrize("argv, complaint", [
    (["--profile", "tls"], "invalid choice: 'tls'"),
    (["--profile", "noise", "--suite", "x"], "invalid choice: 'x'"),
    (["--suite", "25519_AESGCM_SHA256"], "--suite goes with --profile noise"),
    (["--profile", "noise", "--client-id", "kitchen"], "--client-id"),
])
def test_cli_refuses_bad_profile_options(argv: list[str], complaint: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--url", "ws://127.0.0.1:1/sendspin", *argv])
    assert exit_.value.code == 2
    assert complaint in capsys.readouterr().err


def test_cli_identity_file_is_created_then_kept(tmp_path: Path) -> None:
    key = tmp_path / "probe.key"
    first = parse_args(["--url", "ws://127.0.0.1:1/s", "--profile", "noise", "--identity", str(key)])
    again = parse_args(["--url", "ws://127.0.0.1:1/s", "--profile", "noise", "--identity", str(key)])
    assert first.identity.peer_id == again.identity.peer_id
    key.write_text("not a key\n")
    with pytest.raises(SystemExit):
        parse_args(["--url", "ws://127.0.0.1:1/s", "--profile", "noise", "--identity", str(key)])


async def _cli_session(tmp_path: Path, key: Path) -> tuple[ProbeNoiseServer, dict[str, Any], int | None, str]:
    server = ProbeNoiseServer(chunks=20)
    ws_server, url = await server.serve()
    log = tmp_path / "cli.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harness.probe", "--url", url, "--profile", "noise", "--suite", "25519_AESGCM_SHA256",
        "--identity", str(key), "--roles", "player@v1", "--log", str(log),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # stopped once it logged the whole stream (a --duration raced its start-up on a starved machine)
        deadline = time.monotonic() + 30
        while proc.returncode is None and time.monotonic() < deadline and \
                (log.read_text().count('"event":"audio"') if log.exists() else 0) < 20:
            await asyncio.sleep(0.05)
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        ws_server.close()
        await ws_server.wait_closed()
    return server, json.loads(out.decode().splitlines()[-1]), proc.returncode, err.decode()


def test_the_probe_cli_in_noise(tmp_path: Path, run: Callable[..., Any]) -> None:
    key = tmp_path / "probe.key"
    identity = parse_args(["--url", "ws://127.0.0.1:1/s", "--profile", "noise", "--identity", str(key)]).identity
    server, summary, code, err = run(_cli_session(tmp_path, key), 60)
    assert code == 0, err
    conn = server.connections[0]
    assert conn.client_id == identity.peer_id == summary["client_id"] and conn.suite == "25519_AESGCM_SHA256"
    assert summary["profile"] == "noise" and summary["sessions"] == 1
    assert (summary["audio_samples"], summary["gaps"], summary["duplicates"]) == (20 * CHUNK_FRAMES, 0, 0), summary
    assert conn.received[-2:] == ["client/leave", "client/goodbye"], conn.received


# --- acceptance: the probe against aiosendspin 10.2.1's server ------------------------------------


async def _against_aiosendspin(python: str, tmp_path: Path, suite: str, dialled: bool) -> dict[str, Any]:
    """The probe dials aiosendspin's server (`dialled` False), or listens and the server dials it."""
    config = _config(suite, time_interval_s=0.1)
    listener = socket.create_server(("127.0.0.1", 0)) if dialled else None
    argv = [str(PEER), config.client_id or "", "1.5"]
    own_url = ""
    if listener is not None:
        listener.setblocking(False)
        own_url = f"ws://127.0.0.1:{listener.getsockname()[1]}/sendspin"
        argv = [str(DIALER), config.client_id or "", own_url, "1.5"]
    proc = await asyncio.create_subprocess_exec(python, *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    report: dict[str, Any] = {}
    log = EventLog(tmp_path / "probe.jsonl", "probe")
    try:
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))  # type: ignore[union-attr]
        probe = ProbeClient(own_url or ready["url"], config, log)
        ended = probe.wait_type(m.StreamEnd, 40)
        try:
            if listener is None:
                await probe.connect()
            else:
                sock, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(listener), 30)
                await probe.accept(sock, "/sendspin")
            await ended
            report["end_us"] = now_us()
            await probe.close()
        finally:
            await probe.close(goodbye=False)
        report["server_id"], report["probe"] = ready["server_id"], probe
        proc.stdin.close()  # type: ignore[union-attr]
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        report["out"], report["err"], report["returncode"] = out.decode(), err.decode(), proc.returncode
    finally:
        log.close()
        if listener is not None:
            listener.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return report


@pytest.mark.parametrize("dialled", [False, True], ids=["probe-dials", "server-dials"])
@pytest.mark.parametrize("suite", SUITES)
def test_the_probe_streams_from_aiosendspin_10_2_1(tmp_path: Path, run: Callable[..., Any], suite: str,
                                                   dialled: bool) -> None:
    python = aiosendspin10_python()
    report = run(_against_aiosendspin(python, tmp_path, suite, dialled), 150)
    assert report["returncode"] == 0, report["err"][-2000:]
    streamed = json.loads(report["out"].splitlines()[-1])["streamed"]
    probe: ProbeClient = report["probe"]
    log = tmp_path / "probe.jsonl"
    (hs,) = _records(log, "noise_handshake")
    assert hs["suite"] == suite and hs["psk_category"] == "sn" and hs["server_id"] == report["server_id"]
    audio = _records(log, "audio")
    assert probe.audio.samples == streamed and audio[0]["first"] == 0, (probe.audio.samples, streamed)
    assert (probe.audio.gaps, probe.audio.duplicates, probe.audio.reordered, probe.audio.corrupt) == (0, 0, 0, 0)
    assert all(0 < r["send_ahead_us"] < 5_000_000 for r in audio), [r["send_ahead_us"] for r in audio][:5]
    events = Events.load(tmp_path)
    bounds = Bounds(time_reply_grace_us=300_000)  # a short session: replies are due within 0.3 s here
    verdicts = [checkers.audio_intact(events, "probe", bounds, streamed / RATE),
                checkers.session_alive(events, "probe", bounds, report["end_us"])]
    assert all(verdicts), [v.explain() for v in verdicts]
    sent = [r["type"] for r in _records(log, "send")]
    assert sent[-2:] == ["client/leave", "client/goodbye"], sent
    assert not _records(log, "reject"), _records(log, "reject")
    received = [r["type"] for r in _records(log, "recv") if r["type"] != "server/time"]
    if dialled:
        assert _records(log, "accepted")
    print(f"{suite}, {'server dials' if dialled else 'probe dials'}: received {received}", file=sys.stderr)
    print(f"{suite}: {len(audio)} chunks, {streamed} frames, send_ahead "
          f"{min(r['send_ahead_us'] for r in audio)}..{max(r['send_ahead_us'] for r in audio)} µs, "
          f"close {probe.close_code}", file=sys.stderr)
