"""`python -m reference_server` / `sendspin-reference-server`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .config import ServerConfig
from .profiles import parse_profiles
from .server import ReferenceServer


def _positive(kind: type, name: str):
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text!r}")
        return value
    return parse


def _profiles(text: str) -> tuple[str, ...]:
    try:
        return parse_profiles(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# Options only the coordinator takes; everything else is passed on to its workers.
_COORDINATOR_ONLY = {"--workers": 1, "--respawn": 0, "--ready-file": 1, "--port": 1, "--proc": 1,
                     "--heartbeat-timeout": 1, "--stall-timeout": 1, "--control-port": 1,
                     "--identity": 1}  # a worker gets the key over its IPC socket, not its command line


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(prog="sendspin-reference-server",
                                description="Sendspin reference server (legacy and noise profiles).")
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port to bind, 0 = ephemeral (default %(default)s)")
    p.add_argument("--control-port", type=int, default=d.control_port,
                   help="port of the control endpoint (scripted actions: POST /actions/NAME), 0 = ephemeral; "
                        "with --workers the coordinator's, which forwards to every worker (default %(default)s)")
    p.add_argument("--ready-file", type=Path, help="write JSON with the bound address here once listening")
    p.add_argument("--log-dir", type=Path, help="write the JSON-lines event log into this directory")
    p.add_argument("--proc", default=d.proc, help="process name in the event log (default %(default)s)")
    p.add_argument("--workers", type=int, help="run a coordinator and this many worker processes (N >= 1); "
                   "without it, one process serves everything")
    p.add_argument("--respawn", action="store_true", help="with --workers: restart a dead worker on its port")
    p.add_argument("--heartbeat-timeout", type=_positive(float, "--heartbeat-timeout"), default=1.0,
                   help="with --workers: a STOPPED worker silent this long is hung and is killed "
                        "(default %(default)s)")
    p.add_argument("--stall-timeout", type=_positive(float, "--stall-timeout"), default=5.0,
                   help="with --workers: a RUNNING worker silent this long (deadlocked, or too busy to beat) "
                        "is killed (default %(default)s)")
    p.add_argument("--profiles", type=_profiles, default=d.profiles, metavar="legacy,noise",
                   help="wire revisions served; a connection's first message picks one (client/init: noise, "
                        "client/hello: legacy) (default: legacy,noise)")
    p.add_argument("--identity", type=Path, metavar="FILE",
                   help="the noise static key (base64url private key), created there if absent; with --workers "
                        "the coordinator hands it to every worker (one server_id); default: a fresh key per run")
    p.add_argument("--psks", type=Path, metavar="FILE",
                   help="noise: JSON {\"psks\": [{\"key\", \"category\", \"client_id\"}]}, base64url: the PSK "
                        "to reference for each client_id (e.g. a long-term one it is paired with) instead of the "
                        "Sentinel; such a session plays without unpaired access")
    p.add_argument("--handshake-timeout", type=_positive(float, "--handshake-timeout"),
                   default=d.handshake_step_timeout_s,
                   help="noise: seconds for Noise message 2, and for client/hello after server/hello "
                        "(default %(default)s)")
    p.add_argument("--source", default=d.source, help="'watermark' or a PCM WAV file (default %(default)s)")
    p.add_argument("--chunk-ms", type=_positive(int, "--chunk-ms"), default=d.chunk_ms)
    p.add_argument("--max-lead-ms", type=_positive(int, "--max-lead-ms"), default=d.max_lead_ms)
    p.add_argument("--no-autoplay", action="store_true", help="start with the group stopped")
    p.add_argument("--artwork-bytes", type=_positive(int, "--artwork-bytes"), default=d.artwork_bytes,
                   help="size of the generated artwork image (default %(default)s)")
    p.add_argument("--fragment-bytes", type=_positive(int, "--fragment-bytes"), default=d.fragment_bytes,
                   help="send messages above this size as fragments of this size (default %(default)s)")
    p.add_argument("--payload-timeout", type=_positive(float, "--payload-timeout"), default=d.payload_timeout_s,
                   help="seconds a started message may take to finish (default %(default)s)")
    p.add_argument("--hello-timeout", type=_positive(float, "--hello-timeout"), default=d.hello_timeout_s,
                   help="seconds a new connection may take to send client/hello (default %(default)s)")
    p.add_argument("--slow-reader-close", type=_positive(float, "--slow-reader-close"), default=d.slow_reader_close_s,
                   help="close a peer that read nothing for this many seconds (default %(default)s)")
    p.add_argument("--max-message-bytes", type=_positive(int, "--max-message-bytes"), default=d.max_message_bytes)
    p.add_argument("--dial", action="append", default=[], metavar="ws://HOST:PORT/PATH",
                   help="server-initiated: dial this listening client (repeatable) and dial it again after a "
                        "loss, with backoff, unless its client/goodbye said not to; single process only")
    # internal: how the coordinator starts a worker
    p.add_argument("--ipc-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--heartbeat", type=_positive(float, "--heartbeat"), default=0.1, help=argparse.SUPPRESS)
    return p


def to_config(a: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=a.host, port=a.port, control_port=a.control_port, ready_file=a.ready_file, log_dir=a.log_dir,
        proc=a.proc, source=a.source, profiles=a.profiles, identity_file=a.identity, psks_file=a.psks,
        handshake_step_timeout_s=a.handshake_timeout,
        chunk_ms=a.chunk_ms, max_lead_ms=a.max_lead_ms, autoplay=not a.no_autoplay, artwork_bytes=a.artwork_bytes,
        fragment_bytes=a.fragment_bytes, payload_timeout_s=a.payload_timeout, hello_timeout_s=a.hello_timeout,
        slow_reader_close_s=a.slow_reader_close, max_message_bytes=a.max_message_bytes, dial=tuple(a.dial),
    )


def worker_argv(argv: list[str]) -> list[str]:
    """The command line of a worker: ours without the coordinator-only options."""
    out: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in _COORDINATOR_ONLY:
            skip = 0 if "=" in arg else _COORDINATOR_ONLY[name]
            continue
        out.append(arg)
    return [sys.executable, "-m", "reference_server", *out]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.workers is not None and args.dial:
        parser.error("--dial needs the single-process server (no --workers): which worker would dial?")
    bad = [u for u in args.dial if not u.startswith("ws://")]
    if bad:
        parser.error(f"--dial takes a ws:// URL, got {bad[0]!r}")
    config = to_config(args)
    try:
        if args.ipc_fd is not None:
            from .worker import run_worker

            return asyncio.run(run_worker(config, args.ipc_fd, args.heartbeat))
        if args.workers is not None:
            from .coordinator import Coordinator

            coordinator = Coordinator(config, args.workers, worker_argv(argv), respawn=args.respawn,
                                      heartbeat_timeout_s=args.heartbeat_timeout, stall_timeout_s=args.stall_timeout)
            try:
                return asyncio.run(coordinator.run())
            except RuntimeError as exc:  # a worker that could not start
                print(f"sendspin-reference-server: {exc}", file=sys.stderr)
                return 1
        server = ReferenceServer(config)
    except ValueError as exc:
        print(f"sendspin-reference-server: {exc}", file=sys.stderr)
        return 2
    asyncio.run(server.run())
    return 0
