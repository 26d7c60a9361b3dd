"""The probe client as a program: `python -m harness.probe` or `sendspin-probe`.

Client-initiated (`--url`): connect, stay in the session, and after a loss connect
again with the probe's backoff (RECONNECT_BACKOFF_S), until SIGTERM/SIGINT or
`--duration`. Server-initiated (`--listen HOST:PORT`, `--path`): serve a WebSocket
endpoint and run the same client session on each connection a server dials in, one
at a time (a second dial while in a session gets HTTP 503); after a loss, wait for
the next dial. `--once`: one session only (no reconnect, one accepted connection);
the run ends with it.

A session is dead once the server has answered no `client/time` for `--dead-session`
seconds (default DEAD_SESSION_S; 0: never): a stalled message, a blackholed path or a
server that answers pings but sends nothing else. The probe then drops the connection
and, unless `--once`, connects again (a server-initiated one waits for the next dial).

`--profile legacy|noise` picks the wire revision (default legacy). In `noise` the
probe announces `--suite` in `client/init`, its client_id is its X25519 public key
(`--identity FILE` keeps one across runs: the base64url private key, written with a
fresh key if the file does not exist; otherwise a fresh key per run), and it asks for
unpaired access (the Sentinel PSK): a server must allow that client_id unpaired.

Exit status: 0 = stopped (signal, `--duration`) while in a session, or with `--once`
the server closed the session cleanly (1000/1001); 1 = anything else, with one line on
stderr; 2 = bad arguments. stdout: one JSON line with what the run saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .probe import NOISE_SUITES, PROFILES, RECONNECT_BACKOFF_S, ProbeClient, ProbeConfig
from .protocol import EventLog
from .protocol import messages as m

ROLE = re.compile(r"^(_[\w.-]+(@v\d+)?|[a-z]+@v\d+)$")   # spec roles are versioned; `_custom` ones may not be
CLEAN_CLOSES = (1000, 1001)
# A player declares what it can play, preferred first; a second format lets a server change it mid-stream.
FORMATS = (m.AudioFormat(codec="pcm", channels=2, sample_rate=48_000, bit_depth=16),
           m.AudioFormat(codec="pcm", channels=2, sample_rate=48_000, bit_depth=24))
# several missed server/time replies (the probe asks every 0.1 s), yet above a 3 s stall a
# live server recovers from, and well inside the gate's client_dead_session_us
DEAD_SESSION_S = 5.0
BUSY_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


# --- arguments ----------------------------------------------------------------------------------


def _roles(text: str) -> list[str]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in roles if not ROLE.match(r)]
    if not roles or bad:
        raise argparse.ArgumentTypeError(f"roles must be a comma-separated list like player@v1,metadata@v1 "
                                         f"(bad: {', '.join(bad) or 'empty'})")
    return roles


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 0 = any free one), got {text!r}")
    return host.strip("[]"), int(port)


def _ws_url(text: str) -> str:
    if not re.match(r"^wss?://[^/\s]+", text):
        raise argparse.ArgumentTypeError(f"expected a ws:// URL, got {text!r}")
    if text.startswith("wss://"):
        raise argparse.ArgumentTypeError("wss:// is not supported (the legacy profile runs on cleartext ws://)")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sendspin-probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", type=_ws_url, help="client-initiated: the server's WebSocket URL")
    where.add_argument("--listen", type=_host_port, metavar="HOST:PORT",
                       help="server-initiated: serve a WebSocket endpoint here and wait for servers to dial in")
    p.add_argument("--path", default=None, help="with --listen: the endpoint's path (default /sendspin)")
    p.add_argument("--profile", choices=PROFILES, default="legacy", help="wire revision (default: legacy)")
    p.add_argument("--suite", choices=NOISE_SUITES, default=None,
                   help=f"with --profile noise: the Noise suite (default {NOISE_SUITES[0]})")
    p.add_argument("--identity", type=Path, default=None, metavar="FILE",
                   help="with --profile noise: the X25519 private key (base64url), created if missing "
                        "(default: a fresh key per run)")
    p.add_argument("--client-id", default=None,
                   help="legacy: client/hello client_id (default: the name); noise: the key's, not settable")
    p.add_argument("--name", default="sendspin-probe", help="client/hello name (default: sendspin-probe)")
    p.add_argument("--roles", type=_roles, default=["player@v1"], help="comma-separated (default: player@v1)")
    p.add_argument("--duration", type=_positive, default=None, help="stop after S seconds (default: until a signal)")
    p.add_argument("--once", action="store_true", help="one session: no reconnect, one accepted connection")
    p.add_argument("--dead-session", type=_non_negative, default=DEAD_SESSION_S, metavar="S",
                   help=f"drop a session whose server answered no client/time for S s (default {DEAD_SESSION_S:g}; "
                        "0: never)")
    p.add_argument("--log", type=Path, default=None, help="the probe's event log (JSON lines)")
    p.add_argument("--ready-file", type=Path, default=None,
                   help="JSON written once connected (--url) or listening (--listen): pid, url, host, port, "
                        "client_id")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.path is not None and args.listen is None:
        p.error("--path goes with --listen (with --url the path is part of the URL)")
    if args.profile != "noise":
        for option in ("suite", "identity"):
            if getattr(args, option) is not None:
                p.error(f"--{option} goes with --profile noise")
    else:
        if args.client_id is not None:
            p.error("--client-id goes with --profile legacy: in noise the client_id is the identity's public key "
                    "(keep one with --identity FILE)")
        args.suite = args.suite or NOISE_SUITES[0]
        if args.identity is not None:
            try:
                args.identity = _load_identity(args.identity)
            except (OSError, ValueError) as exc:
                p.error(f"--identity {args.identity}: {exc}")
    if args.listen is not None:
        args.path = args.path or "/sendspin"
        if not args.path.startswith("/"):
            p.error(f"--path must start with '/', got {args.path!r}")
    return args


def _load_identity(path: Path) -> Any:
    """The key in `path` (base64url of 32 bytes), or a fresh one written there (mode 0600)."""
    from .protocol.noise import Identity
    from .protocol.noise_crypto import b64url, b64url_decode

    if not path.exists():
        identity = Identity.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(b64url(identity.private) + "\n")
        return identity
    text = path.read_text().strip()
    try:
        return Identity(b64url_decode(text, 32))
    except ValueError as exc:
        raise ValueError(f"not an X25519 private key (43 characters of base64url): {exc}") from None


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    reason: str = ""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


def _stop_event(duration: float | None) -> asyncio.Event:
    """Set by SIGTERM, SIGINT or the end of `duration`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    return stop


async def _first_of(*aws: asyncio.Future[Any] | asyncio.Task[Any]) -> None:
    """Until one finishes; the others are cancelled."""
    done, pending = await asyncio.wait(aws, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        t.result()   # an unexpected error surfaces here, not in a forgotten task


def _sessions(probe: ProbeClient) -> int:
    return sum(isinstance(msg, m.ServerHello | m.NoiseServerHello) for msg in probe.messages)


def _verdict(probe: ProbeClient, once: bool, last_error: str) -> Outcome:
    """Judged before close(): was the probe in a healthy session when the run ended?"""
    if probe.in_session:
        return Outcome(0)
    if _sessions(probe) == 0:
        return Outcome(1, f"no Sendspin session was established ({last_error or 'no server connected'})")
    if once and probe.close_code in CLEAN_CLOSES:
        return Outcome(0)
    return Outcome(1, f"not in a session when the run ended: last close {probe.close_code} "
                      f"{probe.close_reason!r}{f'; {last_error}' if last_error else ''}")


async def _abandon(probe: ProbeClient) -> None:
    """Drop a connection that failed half way, and let its close land before the next
    attempt replaces the per-connection state."""
    if probe.transport is not None and not probe.closed.is_set():
        probe.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(probe.closed.wait(), 1.0)


async def _connect_until(probe: ProbeClient, stop: asyncio.Event, once: bool) -> str:
    """Connect; retry with the probe's backoff until it works or `stop` (not with `once`).
    Returns the last error ('' once connected)."""
    for attempt in itertools.count():
        try:
            await probe.connect()
            return ""
        except (OSError, ConnectionError, TimeoutError) as exc:
            error = f"{probe.url}: {exc or type(exc).__name__}"
            await _abandon(probe)
        if once:
            return error
        delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return error
    raise AssertionError("unreachable")


async def run_client(args: argparse.Namespace, probe: ProbeClient, stop: asyncio.Event) -> Outcome:
    error = await _connect_until(probe, stop, args.once)
    if not error and args.ready_file is not None:
        _write_json(args.ready_file, {"pid": os.getpid(), "mode": "client", "url": probe.connected_url,
                                      "client_id": probe.config.client_id or probe.name})
    if not error:
        probe.config.reconnect = not args.once   # the probe itself reconnects after a loss from now on
        ended = [asyncio.ensure_future(stop.wait())]
        if args.once:
            ended.append(asyncio.ensure_future(probe.closed.wait()))
        await _first_of(*ended)
    return _verdict(probe, args.once, error)


async def _refuse(sock: socket.socket) -> None:
    """A second server dialled while we are in a session (one client, one server): HTTP 503.
    Its request is read first, so that closing does not reset the connection before
    the answer is read."""
    loop = asyncio.get_running_loop()
    with sock, contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(loop.sock_recv(sock, 65536), 1.0)
        await asyncio.wait_for(loop.sock_sendall(sock, BUSY_RESPONSE), 1.0)


async def _serve(listener: socket.socket, probe: ProbeClient, path: str, once: bool,
                 errors: list[str]) -> None:
    """Accept servers' dials, one session at a time; with `once`, return when the first ends."""
    loop = asyncio.get_running_loop()
    refusals: set[asyncio.Task[None]] = set()
    try:
        await _accept_loop(loop, listener, probe, path, once, errors, refusals)
    finally:
        for t in refusals:
            t.cancel()
        await asyncio.gather(*refusals, return_exceptions=True)


async def _accept_loop(loop: asyncio.AbstractEventLoop, listener: socket.socket, probe: ProbeClient, path: str,
                       once: bool, errors: list[str], refusals: set[asyncio.Task[None]]) -> None:
    while True:
        sock, _ = await loop.sock_accept(listener)
        if probe.transport is not None and not probe.closed.is_set():
            task = loop.create_task(_refuse(sock))
            refusals.add(task)
            task.add_done_callback(refusals.discard)
            continue
        try:
            await probe.accept(sock, path)
        except (OSError, ConnectionError, TimeoutError) as exc:
            errors.append(str(exc) or type(exc).__name__)
            await _abandon(probe)
            continue
        if once:
            await probe.closed.wait()
            return


async def run_listener(args: argparse.Namespace, probe: ProbeClient, stop: asyncio.Event) -> Outcome:
    host, port = args.listen
    try:
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        return Outcome(1, f"cannot listen on {host}:{port}: {exc}")
    listener.setblocking(False)
    errors: list[str] = []
    with listener:
        bound = listener.getsockname()[1]
        url = f"ws://{host}:{bound}{args.path}"
        if args.ready_file is not None:
            _write_json(args.ready_file, {"pid": os.getpid(), "mode": "listen", "url": url,
                                          "host": host, "port": bound, "path": args.path,
                                          "client_id": probe.config.client_id or probe.name})
        await _first_of(asyncio.ensure_future(stop.wait()),
                        asyncio.ensure_future(_serve(listener, probe, args.path, args.once, errors)))
    return _verdict(probe, args.once, errors[-1] if errors else "")


def _summary(probe: ProbeClient, args: argparse.Namespace, outcome: Outcome) -> dict[str, Any]:
    a = probe.audio
    return {"client_id": probe.config.client_id or probe.name, "name": probe.name, "profile": probe.config.profile,
            "mode": "listen" if args.listen else "client", "sessions": _sessions(probe),
            "audio_chunks": probe.audio_chunks, "audio_samples": a.samples, "gaps": a.gaps,
            "duplicates": a.duplicates, "reordered": a.reordered, "last_close_code": probe.close_code,
            "exit": outcome.code, "reason": outcome.reason}


async def run(args: argparse.Namespace) -> Outcome:
    stop = _stop_event(args.duration)
    log = EventLog(args.log, args.name)
    noise = {"suite": args.suite, "identity": args.identity} if args.profile == "noise" else {}
    config = ProbeConfig(name=args.name, client_id=args.client_id, roles=args.roles, answer_commands=True,
                         formats=list(FORMATS), dead_session_s=args.dead_session or None, profile=args.profile,
                         **noise)
    url = args.url or f"ws://{args.listen[0]}:{args.listen[1]}{args.path}"
    probe = ProbeClient(url, config, log)
    try:
        outcome = await (run_listener if args.listen else run_client)(args, probe, stop)
        await probe.close()   # goodbye (shutdown) if still in a session, then wait for the server's close
    finally:
        log.close()
    print(json.dumps(_summary(probe, args, outcome)), flush=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)   # exits 2 with a usage line on bad arguments
    outcome = asyncio.run(run(args))
    if outcome.code:
        print(f"sendspin-probe: {outcome.reason}", file=sys.stderr)
    return outcome.code
