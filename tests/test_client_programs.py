"""Our ready-made clients as programs (docs/adapter-contract.md §8), judged from the
outside as the client gate will: the server's event log, exit status, stdout, stderr.

- `python -m harness.probe` (harness/probe_cli.py) against a spawned reference server,
  and listening while aiosendspin 6.1.1's server dials in (server-initiated);
- `clients/aiosendspin_client.py` (aiosendspin 6.1.1's SendspinClient) against a
  spawned reference server, found through a conformance registry file, and what it
  does when the server dies (it does not reconnect);
- the same script under aiosendspin 10.2.1 (the `noise` profile) against the reference
  server in noise, both ways (it dials; the server dials its listener), checked sample
  by sample against the server's watermark (skipped unless SENDSPIN_AIOSENDSPIN10_PYTHON
  names a Python with aiosendspin[server]==10.2.1; the project's venv keeps 6.1.1).

Real processes, real sockets on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from noise_support import aiosendspin10_python

from harness import probe_cli
from harness.probe import ProbeConfig
from harness.protocol import messages as m
from harness.protocol import watermark
from harness.protocol.noise import Identity
from harness.protocol.noise_crypto import b64url_decode
from harness.scenario import Scenario
from harness.server_control import ServerControl
from harness.topology import Child, await_ready_file, reference_server, spawn_child

ROOT = Path(__file__).resolve().parent.parent
ADAPTER = ROOT / "clients" / "aiosendspin_client.py"
BAD_ARGUMENT = 2


def _aiosendspin_missing() -> str | None:
    try:
        version = importlib.metadata.version("aiosendspin")
    except importlib.metadata.PackageNotFoundError:
        return "aiosendspin is not installed (pip install -e '.[dev]' installs the pinned 6.1.1)"
    return None if version == "6.1.1" else f"aiosendspin {version} is installed; the adapter is pinned to 6.1.1"


needs_aiosendspin = pytest.mark.skipif(_aiosendspin_missing() is not None, reason=_aiosendspin_missing() or "")


# --- plumbing -----------------------------------------------------------------------------------


def records(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines log another process is writing: a half-written last line is skipped."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


async def wait_record(path: Path, match: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                      count: int = 1) -> dict[str, Any]:
    """The `count`-th record that matches."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                found = [r for r in records(path) if match(r)]
                if len(found) >= count:
                    return found[count - 1]
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no {what} in {path.name} within {timeout} s") from None


async def session_of(server_log: Path, client_id: str) -> str:
    hello = await wait_record(server_log, lambda r: r["event"] == "recv" and r.get("type") == "client/hello"
                              and r.get("client_id") == client_id, 20, f"client/hello from {client_id}")
    return hello["session"]


async def audio_flowing(server_log: Path, session: str, chunks: int = 5) -> None:
    """The server's own per-session figures (every 0.5 s) show audio going out."""
    await wait_record(server_log, lambda r: r["event"] == "session_stats" and r["session"] == session
                      and (r.get("audio_sent") or 0) >= chunks, 20, f"{chunks} audio chunks sent to {session}")


def spawn(name: str, argv: list[str], tmp_path: Path) -> Child:
    """stdout and stderr into NAME.out."""
    return spawn_child(name, [sys.executable, *argv], tmp_path / f"{name}.out", cwd=ROOT)


async def sigterm(child: Child, timeout: float = 15.0) -> int | None:
    child.send_signal(signal.SIGTERM)
    assert await child.wait_exited(timeout), f"{child.name} ignored SIGTERM for {timeout} s:\n{child.tail()}"
    return child.reap()


def json_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]


async def set_group_volume(sc: Scenario, url: str, volume: int) -> None:
    """A controller in the same group sets the volume: the server sends server/command to each player."""
    ctl = await sc.probe(url, ProbeConfig(name="controller", roles=["controller@v1"]))
    ctl.send(m.ClientCommand(controller=m.ControllerCommand(command="volume", volume=volume)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the probe CLI ----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_probe_cli_plays_answers_commands_and_exits_0_on_sigterm(run: Callable[..., Any], tmp_path: Path) -> None:
    cli_log, ready, server_log = tmp_path / "cli.jsonl", tmp_path / "cli.ready.json", tmp_path / "server.jsonl"

    async def body() -> tuple[int | None, str]:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            url = server.ready["url"]
            cli = spawn("cli", ["-m", "harness.probe", "--url", url, "--client-id", "cli-1", "--name", "CLI one",
                                "--log", str(cli_log), "--ready-file", str(ready)], tmp_path)
            try:
                assert (await await_ready_file(cli, ready, 20))["url"] == url
                session = await session_of(server_log, "cli-1")
                await audio_flowing(server_log, session)
                await set_group_volume(sc, url, 40)
                command = await wait_record(cli_log, lambda r: r["event"] == "recv"
                                            and r.get("type") == "server/command", 10, "server/command")
                await wait_record(cli_log, lambda r: r["event"] == "send" and r.get("type") == "client/state"
                                  and r["t_us"] > command["t_us"], 10, "client/state after server/command")
                return await sigterm(cli), session
            finally:
                await cli.astop()

    code, session = run(body(), 80)
    assert code == 0, (tmp_path / "cli.out").read_text()
    summary = json_lines(tmp_path / "cli.out")[-1]
    assert summary["client_id"] == "cli-1" and summary["name"] == "CLI one" and summary["sessions"] == 1
    assert summary["audio_chunks"] > 0 and summary["gaps"] == summary["duplicates"] == summary["reordered"] == 0
    server = records(server_log)
    assert [r["reason"] for r in server if r["event"] == "goodbye" and r["session"] == session] == ["shutdown"]
    close = [r for r in server if r["event"] == "close" and r["session"] == session]
    assert len(close) == 1 and close[0]["audio_sent"] > 0, close
    states = [r for r in server if r["event"] == "recv" and r["session"] == session and r["type"] == "client/state"]
    assert len(states) >= 2, "the volume change was not reported in a client/state"


@needs_aiosendspin
@pytest.mark.timeout(90)
def test_probe_cli_listens_and_a_dialling_server_streams_to_it(run: Callable[..., Any], tmp_path: Path) -> None:
    """Server-initiated: aiosendspin 6.1.1's server dials our listener; a second
    server dialling during the session is turned away with HTTP 503."""
    from interop_peers import AiosendspinServer

    ready = tmp_path / "cli.ready.json"

    async def second_dial(port: int) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /sendspin HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        try:
            return (await asyncio.wait_for(reader.readline(), 5)).decode()
        finally:
            writer.close()
            await writer.wait_closed()

    async def body() -> tuple[int | None, int, str]:
        cli = spawn("cli", ["-m", "harness.probe", "--listen", "127.0.0.1:0", "--client-id", "lis-1",
                            "--log", str(tmp_path / "cli.jsonl"), "--ready-file", str(ready)], tmp_path)
        try:
            info = await await_ready_file(cli, ready, 20)
            assert info["url"] == f"ws://127.0.0.1:{info['port']}/sendspin"
            server = AiosendspinServer()
            await server.start()
            try:
                await asyncio.wait_for(server.server.connect_to_client_and_wait(info["url"]), 10)
                assert await server.wait_client(10) == "lis-1"
                busy = await second_dial(info["port"])
                pushed = await server.stream("lis-1", seconds=1.0, channels=2, bit_depth=16)
                return await sigterm(cli), pushed.frames, busy
            finally:
                await server.close()
        finally:
            await cli.astop()

    code, frames, busy = run(body(), 80)
    assert code == 0, (tmp_path / "cli.out").read_text()
    assert busy.startswith("HTTP/1.1 503"), busy
    summary = json_lines(tmp_path / "cli.out")[-1]
    assert summary["mode"] == "listen" and summary["sessions"] == 1
    assert summary["audio_samples"] == frames and summary["gaps"] == summary["duplicates"] == 0, summary
    assert [r["event"] for r in records(tmp_path / "cli.jsonl")][:2] == ["accepted", "send"]


@pytest.mark.parametrize(("argv", "message"), [
    ([], "one of the arguments --url --listen is required"),
    (["--url", "http://127.0.0.1/sendspin"], "expected a ws:// URL"),
    (["--url", "ws://127.0.0.1/sendspin", "--listen", "127.0.0.1:0"], "not allowed with argument"),
    (["--listen", "8928"], "expected HOST:PORT"),
    (["--url", "ws://127.0.0.1/sendspin", "--duration", "0"], "must be > 0"),
    (["--url", "ws://127.0.0.1/sendspin", "--roles", "player"], "roles must be a comma-separated list"),
    (["--url", "ws://127.0.0.1/sendspin", "--path", "/x"], "--path goes with --listen"),
    (["--listen", "127.0.0.1:0", "--path", "x"], "--path must start with '/'"),
])
def test_probe_cli_bad_arguments_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        probe_cli.main(argv)
    assert exc.value.code == BAD_ARGUMENT
    assert message in capsys.readouterr().err


def test_probe_cli_as_a_program_exit_2_and_1_with_one_line_on_stderr() -> None:
    bad = subprocess.run([sys.executable, "-m", "harness.probe", "--url", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == BAD_ARGUMENT
    assert bad.stderr.splitlines()[-1] == "sendspin-probe: error: argument --url: expected a ws:// URL, got 'nope'"
    refused = subprocess.run([sys.executable, "-m", "harness.probe", "--url", f"ws://127.0.0.1:{free_port()}/sendspin",
                              "--once"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith("sendspin-probe: no Sendspin session was established"), refused.stderr
    assert json.loads(refused.stdout)["exit"] == 1


# --- the aiosendspin 6.1.1 adapter --------------------------------------------------------------------


def adapter_module() -> ModuleType:
    """clients/ is not a package: load the script by path (registered, as dataclasses need)."""
    if "aiosendspin_client" not in sys.modules:
        spec = importlib.util.spec_from_file_location("aiosendspin_client", ADAPTER)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["aiosendspin_client"]


@needs_aiosendspin
@pytest.mark.timeout(90)
def test_aiosendspin_client_finds_the_server_plays_answers_commands_and_exits_0_on_sigterm(
        run: Callable[..., Any], tmp_path: Path) -> None:
    """Conformance flags: the server's URL comes from the registry file, the summary
    is conformance's client summary."""
    registry, ready, summary_path = tmp_path / "registry.json", tmp_path / "ready.json", tmp_path / "summary.json"
    server_log = tmp_path / "server.jsonl"

    async def body() -> tuple[int | None, str]:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            url = server.ready["url"]
            registry.write_text(json.dumps({"reference server": {"url": url}}))
            client = spawn("aio", [str(ADAPTER), "--summary", str(summary_path), "--ready", str(ready),
                                   "--registry", str(registry), "--scenario-id", "client-initiated-pcm",
                                   "--initiator-role", "client", "--preferred-codec", "pcm",
                                   "--timeout-seconds", "80", "--client-name", "Aio one", "--client-id", "aio-1",
                                   "--server-id", "reference-server", "--server-name", "reference server"], tmp_path)
            try:
                assert (await await_ready_file(client, ready, 20))["status"] == "ready"
                session = await session_of(server_log, "aio-1")
                await audio_flowing(server_log, session)
                await set_group_volume(sc, url, 40)
                await wait_record(server_log, lambda r: r["event"] == "recv" and r["session"] == session
                                  and r.get("type") == "client/state", 10, "a second client/state (the new volume)",
                                  count=2)
                return await sigterm(client), session
            finally:
                await client.astop()

    code, session = run(body(), 80)
    assert code == 0, (tmp_path / "aio.out").read_text()
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "ok" and summary["client_id"] == "aio-1" and summary["client_name"] == "Aio one"
    assert summary["peer_hello"]["payload"]["server_id"] == "reference-server"
    assert summary["stream"]["codec"] == "pcm" and summary["sessions"] == 1 and summary["server_commands"] >= 1
    audio = summary["audio"]
    assert audio["audio_chunk_count"] > 0 and audio["received_sample_count"] > 0
    assert len(audio["received_pcm_sha256"]) == 64
    server = records(server_log)
    assert [r["reason"] for r in server if r["event"] == "goodbye" and r["session"] == session] == ["shutdown"]
    close = [r for r in server if r["event"] == "close" and r["session"] == session]
    assert len(close) == 1 and close[0]["audio_sent"] > 0, close


@pytest.mark.parametrize(("argv", "message"), [
    ([], "where is the server?"),
    (["--url", "http://127.0.0.1/sendspin"], "expected a ws:// URL"),
    (["--initiator-role", "server", "--port", "0"], "expected a TCP port 1-65535"),
    (["--url", "ws://127.0.0.1/sendspin", "--duration", "-1"], "must be > 0"),
    (["--initiator-role", "server", "--path", "sendspin"], "--path must start with '/'"),
    (["--url", "ws://127.0.0.1/sendspin", "--initiator-role", "both"], "invalid choice"),
    (["--url", "ws://127.0.0.1/sendspin", "--suite", "aes"], "expected one of chacha, aesgcm"),
])
def test_aiosendspin_client_bad_arguments_exit_2(argv: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        adapter_module().main(argv)
    assert exc.value.code == BAD_ARGUMENT
    assert message in capsys.readouterr().err


@needs_aiosendspin
def test_aiosendspin_client_refuses_an_unsupported_scenario_with_an_error_summary(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = tmp_path / "summary.json"
    code = adapter_module().main(["--url", "ws://127.0.0.1:9/sendspin", "--scenario-id", "server-initiated-flac",
                                  "--summary", str(summary), "--ready", str(tmp_path / "ready.json")])
    assert code == 1
    report = json.loads(summary.read_text())
    assert report["status"] == "error" and "server-initiated-flac" in report["reason"]
    assert (tmp_path / "ready.json").exists()
    assert capsys.readouterr().err.splitlines()[-1].startswith("aiosendspin_client: scenario 'server-initiated-flac'")


# --- the same script under aiosendspin 10.2.1 (noise) --------------------------------------------------

CHACHA, AESGCM = "25519_ChaChaPoly_SHA256", "25519_AESGCM_SHA256"


def spawn10(python: str, name: str, argv: list[str], tmp_path: Path) -> Child:
    return spawn_child(name, [python, str(ADAPTER), *argv], tmp_path / f"{name}.out", cwd=ROOT)


def check_audio_against_the_watermark(summary: dict[str, Any]) -> int:
    """The reference server's source carries each frame's index (harness/protocol/watermark.py):
    the summary's counts and both hashes must be those of consecutive frames from the first
    one received, so one lost, repeated or altered sample fails. Returns the frames."""
    audio, stream = summary["audio"], summary["stream"]
    assert (stream["codec"], stream["sample_rate"], stream["channels"], stream["bit_depth"]) == ("pcm", 48_000, 2, 16)
    first = watermark.decode(bytes.fromhex(audio["first_frame_hex"]), 2, 16)[0]
    frames = audio["received_sample_count"] // 2
    assert frames > 0 and audio["audio_bytes"] == frames * 4 and audio["audio_chunk_count"] > 0, audio
    pcm = watermark.encode(int(first), frames, 2, 16)
    assert audio["received_encoded_sha256"] == hashlib.sha256(pcm).hexdigest()
    canonical = (np.frombuffer(pcm, "<i2").astype(np.float32) / 32768).astype("<f4").tobytes()
    assert audio["received_pcm_sha256"] == hashlib.sha256(canonical).hexdigest()
    low, high = audio["send_ahead_us"]
    assert 0 < low <= high < 5_000_000, audio["send_ahead_us"]
    return frames


@pytest.mark.timeout(120)
def test_aiosendspin10_client_plays_answers_commands_and_says_goodbye_on_sigterm(
        run: Callable[..., Any], tmp_path: Path) -> None:
    """Client-initiated, in noise, ChaCha: the client_id is the key kept in --identity
    (and --client-id is ignored, with a note); volume and mute from the server's control
    endpoint come back in client/state; SIGTERM: goodbye (shutdown), exit 0."""
    python = aiosendspin10_python()
    key, ready, summary_path = tmp_path / "client.key", tmp_path / "ready.json", tmp_path / "summary.json"
    server_log = tmp_path / "server.jsonl"

    async def body() -> tuple[int | None, str, str]:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--profiles", "noise")
            client = spawn10(python, "aio10", ["--url", server.ready["url"], "--client-id", "aio10-1",
                                               "--client-name", "Aio ten", "--identity", str(key),
                                               "--ready", str(ready), "--summary", str(summary_path)], tmp_path)
            try:
                client_id = (await await_ready_file(client, ready, 30))["client_id"]
                session = await session_of(server_log, client_id)
                await audio_flowing(server_log, session)
                control = ServerControl(server.ready["control"])
                for change, field in (({"volume": 40}, "volume"), ({"mute": True}, "muted")):
                    await control.act("server/command", client_id=client_id, **change)
                    value = next(iter(change.values()))
                    await wait_record(server_log, lambda r, f=field, v=value: r["event"] == "recv"
                                      and r["session"] == session and r.get("type") == "client/state"
                                      and r.get(f) == v, 10, f"client/state with {field} {value}")
                return await sigterm(client), session, client_id
            finally:
                await client.astop()

    code, session, client_id = run(body(), 110)
    assert code == 0, (tmp_path / "aio10.out").read_text()
    assert client_id == Identity(b64url_decode(key.read_text().strip(), 32)).peer_id
    assert key.stat().st_mode & 0o777 == 0o600
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "ok" and summary["implementation_version"] == "10.2.1", summary
    assert (summary["profile"], summary["suite"], summary["client_id"]) == ("noise", CHACHA, client_id)
    assert summary["client_id_requested"] == "aio10-1" and "--client-id 'aio10-1' ignored" in summary["notes"][0]
    assert summary["sessions"] == 1 and summary["server_commands"] == 2 and summary["time_synchronized"]
    assert summary["close_code"] is None, summary   # the client ended the session: no close code of the server's
    assert summary["server"]["server_id"] == summary["peer_hello"]["payload"]["server_id"]
    check_audio_against_the_watermark(summary)
    server = records(server_log)
    hello = next(r for r in server if r["event"] == "recv" and r.get("type") == "client/hello")
    assert hello["client_id"] == client_id and hello["session"] == session
    assert [r["reason"] for r in server if r["event"] == "goodbye" and r["session"] == session] == ["shutdown"]
    close = [r for r in server if r["event"] == "close" and r["session"] == session]
    assert len(close) == 1 and close[0]["code"] == 1000 and close[0]["audio_sent"] >= summary["audio"][
        "audio_chunk_count"], close


@pytest.mark.timeout(120)
def test_aiosendspin10_client_listens_as_a_conformance_adapter_and_the_server_dials_it(
        run: Callable[..., Any], tmp_path: Path) -> None:
    """Server-initiated, AES-GCM, with exactly the conformance runner's flags: the listener
    is registered, the reference server dials it, and the server ending the session
    ends the run with exit 0 and an ok summary."""
    python = aiosendspin10_python()
    registry, ready, summary_path = tmp_path / "registry.json", tmp_path / "ready.json", tmp_path / "summary.json"
    port = free_port()

    async def body() -> tuple[int | None, int, str]:
        async with Scenario(tmp_path) as sc:
            client = spawn10(python, "aio10", [
                "--summary", str(summary_path), "--ready", str(ready), "--registry", str(registry),
                "--scenario-id", "server-initiated-pcm", "--initiator-role", "server", "--preferred-codec", "pcm",
                "--timeout-seconds", "60", "--client-name", "aiosendspin-client", "--client-id",
                "aiosendspin-client-id", "--server-id", "reference-server", "--server-name", "reference server",
                "--port", str(port), "--path", "/sendspin", "--suite", "aesgcm"], tmp_path)
            try:
                info = await await_ready_file(client, ready, 30)
                assert info["url"] == f"ws://127.0.0.1:{port}/sendspin" and info["profile"] == "noise"
                assert json.loads(registry.read_text()) == {"aiosendspin-client": {"url": info["url"]}}
                server = await sc.server("--profiles", "noise", "--dial", info["url"])
                session = await session_of(tmp_path / "server.jsonl", info["client_id"])
                await audio_flowing(tmp_path / "server.jsonl", session)
                server_code = await asyncio.to_thread(server.stop)   # the server ends the session
                assert await client.wait_exited(15), client.tail()
                return client.reap(), server_code, info["client_id"]
            finally:
                await client.astop()

    code, server_code, client_id = run(body(), 110)
    assert server_code == 0
    assert code == 0, (tmp_path / "aio10.out").read_text()
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "ok" and summary["initiator_role"] == "server", summary
    assert (summary["suite"], summary["client_id"], summary["sessions"]) == (AESGCM, client_id, 1)
    assert summary["close_code"] in (1000, 1001), summary
    check_audio_against_the_watermark(summary)


@pytest.mark.timeout(120)
def test_aiosendspin10_client_lets_a_second_dialling_server_displace_the_first(
        run: Callable[..., Any], tmp_path: Path) -> None:
    """A finding about 10.2.1 (6.1.1 refuses a second dial: its attach_websocket raises):
    a server dialling in while another holds the session is admitted (equal rank) and the
    first one gets client/goodbye `another_server`. The run goes on with the newcomer."""
    python = aiosendspin10_python()
    ready, port = tmp_path / "ready.json", free_port()

    async def body() -> int | None:
        async with Scenario(tmp_path) as sc:
            client = spawn10(python, "aio10", ["--initiator-role", "server", "--port", str(port),
                                               "--ready", str(ready)], tmp_path)
            try:
                info = await await_ready_file(client, ready, 30)
                for name in ("server", "server-1"):
                    await sc.server("--profiles", "noise", "--dial", info["url"])
                    await audio_flowing(tmp_path / f"{name}.jsonl", await session_of(tmp_path / f"{name}.jsonl",
                                                                                    info["client_id"]))
                await wait_record(tmp_path / "server.jsonl", lambda r: r["event"] == "goodbye", 10,
                                  "the first server's goodbye")
                return await sigterm(client)
            finally:
                await client.astop()

    code = run(body(), 110)
    assert code == 0, (tmp_path / "aio10.out").read_text()
    first, second = records(tmp_path / "server.jsonl"), records(tmp_path / "server-1.jsonl")
    assert [r["reason"] for r in first if r["event"] == "goodbye"] == ["another_server"]
    assert [r["reason"] for r in second if r["event"] == "goodbye"] == ["shutdown"]
    assert json_lines(tmp_path / "aio10.out")[-1]["sessions"] == 2


def adapter_cmd(version: str) -> list[str]:
    """The script under an interpreter that has aiosendspin `version` (skipped if there is none)."""
    if version == "6.1.1":
        if (why := _aiosendspin_missing()) is not None:
            pytest.skip(why)
        return [sys.executable, str(ADAPTER)]
    return [aiosendspin10_python(), str(ADAPTER)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("version", "profile"), [("6.1.1", "legacy"), ("10.2.1", "noise")])
def test_aiosendspin_client_does_not_reconnect_when_the_server_dies(run: Callable[..., Any], tmp_path: Path,
                                                                    version: str, profile: str) -> None:
    """A finding about the library, both versions: after a lost connection SendspinClient
    stays disconnected. Without --reconnect the adapter's run ends with it: exit 1."""
    cmd = adapter_cmd(version)
    ready = tmp_path / "ready.json"

    async def body() -> tuple[bool, int | None]:
        server = reference_server(tmp_path, "--profiles", profile)
        client = spawn_child("aio", [*cmd, "--url", server.ready["url"], "--ready", str(ready)], tmp_path / "aio.out",
                             cwd=ROOT)
        try:
            await await_ready_file(client, ready, 30)   # written once connected
            server.kill_group(signal.SIGKILL)
            server.reap(5)
            exited = await client.wait_exited(15)
            return exited, client.reap() if exited else None
        finally:
            await client.astop()
            server.stop()

    exited, code = run(body(), 80)
    out = (tmp_path / "aio.out").read_text()
    assert exited and code == 1, out
    assert out.splitlines()[-1].startswith("aiosendspin_client: session ended before the run did (close code 1006); "
                                           f"aiosendspin {version} does not reconnect"), out
    summary = json_lines(tmp_path / "aio.out")[-1]
    assert (summary["sessions"], summary["profile"], summary["notes"]) == (1, profile, [])


def test_aiosendspin10_client_refuses_a_bad_identity_file_with_exit_2(tmp_path: Path) -> None:
    python = aiosendspin10_python()
    key = tmp_path / "bad.key"
    key.write_text("not a key\n")
    bad = subprocess.run([python, str(ADAPTER), "--url", "ws://127.0.0.1:9/sendspin", "--identity", str(key)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == BAD_ARGUMENT, bad.stderr
    assert f"--identity {key}: not a base64url X25519 private key" in bad.stderr.splitlines()[-1]


@needs_aiosendspin
@pytest.mark.parametrize("option", [["--identity", "k.key"], ["--suite", "aesgcm"]])
def test_aiosendspin_client_refuses_noise_options_under_6_1_1(option: list[str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        adapter_module().main(["--url", "ws://127.0.0.1:9/sendspin", *option])
    assert exc.value.code == BAD_ARGUMENT
    assert f"{option[0]} is for the noise profile (aiosendspin 10.2.1); aiosendspin 6.1.1 is installed" \
        in capsys.readouterr().err
