"""`sendspin-proxy`: run the fault proxy, or talk to a running one's control API.

    sendspin-proxy --listen 127.0.0.1:0 --upstream ws://127.0.0.1:8927 [--upstream ...]
                   [--control 127.0.0.1:0 | --no-control] [--plan FILE] [--ready-file F] [--log-dir D]
                   [--health-interval 0.1] [--keep-extensions] [--quiet] [--wire-log]
                   [--view [all]] [--web [HOST:PORT]] [--web-messages 200]

    sendspin-proxy fault types|list|add|update|remove|reset --control URL ...
    sendspin-proxy connections|upstreams|events --control URL
    sendspin-proxy upstream pid INDEX PID --control URL

The control URL may also come from $SENDSPIN_PROXY_CONTROL. Exit codes: 0 ok, 1 the
API answered with an error, 2 usage, 3 the proxy could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SELECTOR_FLAGS = ("json_type", "binary_type", "min_size", "max_size", "nth", "probability", "seed")


def _hostport(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 0 = any free port), got {s!r}")
    return host or "127.0.0.1", int(port)


def _value(s: str) -> Any:
    """k=v values: JSON when they parse (numbers, true, null, lists), else the string."""
    try:
        return json.loads(s)
    except ValueError:
        return s


# --- serving ----------------------------------------------------------------------------------


def serve_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sendspin-proxy", description="Sendspin fault proxy (mitmproxy, reverse mode). "
                                 "Subcommands for a running proxy: fault, connections, upstreams, events, upstream.")
    ap.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0), help="HOST:PORT (default 127.0.0.1:0)")
    ap.add_argument("--upstream", action="append", required=True, metavar="ws://HOST:PORT",
                    help="an upstream server; repeat for a pool (least connections)")
    ap.add_argument("--control", type=_hostport, default=("127.0.0.1", 0), help="control API HOST:PORT")
    ap.add_argument("--no-control", action="store_true", help="no control API")
    ap.add_argument("--plan", type=Path, help="faults to load at start (JSON list or TOML [[fault]])")
    ap.add_argument("--ready-file", type=Path, help="JSON {pid, listen, control, upstreams} once listening")
    ap.add_argument("--log-dir", type=Path, help="event log (proxy.jsonl) and mitmproxy confdir go here")
    ap.add_argument("--proc", default="proxy", help="process name in the event log (file PROC.jsonl)")
    ap.add_argument("--health-interval", type=float, default=0.1, help="upstream TCP probe period, s (0: off)")
    ap.add_argument("--socket-buffer", type=int, default=128 * 1024, metavar="BYTES",
                    help="SO_RCVBUF/SO_SNDBUF of the proxy's sockets, set before data flows, so faults that "
                         "hold a sender give backpressure at once (default %(default)s; 0: kernel autotuning)")
    ext = ap.add_mutually_exclusive_group()
    ext.add_argument("--keep-extensions", dest="strip_extensions", action="store_false",
                     help="forward the client's Sec-WebSocket-Extensions offer, so the peers may negotiate "
                          "permessage-deflate: the real traffic, but message faults cannot act on such a "
                          "connection (they say so)")
    ext.add_argument("--strip-extensions", dest="strip_extensions", action="store_true",
                     help="remove the offer (the default; kept for old scripts)")
    ap.set_defaults(strip_extensions=True)
    ap.add_argument("--quiet", action="store_true", help="log only errors on stderr")
    ap.add_argument("--wire-log", action="store_true",
                    help="write every message that crosses the proxy to the event log (`wire` events)")
    ap.add_argument("--view", nargs="?", const="summary", choices=("summary", "all"),
                    help="print the decoded Sendspin traffic on stdout, audio summed up per second "
                         "(`--view all`: every message)")
    ap.add_argument("--web", nargs="?", const=("127.0.0.1", 8081), type=_hostport, metavar="HOST:PORT",
                    help="serve mitmweb's UI (default 127.0.0.1:8081) with the relayed messages of each connection")
    ap.add_argument("--web-messages", type=int, default=200, metavar="N",
                    help="messages kept per connection for --web (older ones are dropped)")
    return ap


async def _serve(a: argparse.Namespace) -> int:
    from .faults import FaultSpecError, load_plan
    from .master import EmbeddedProxy

    try:
        faults = load_plan(a.plan) if a.plan else []
    except (FaultSpecError, OSError) as e:
        print(f"sendspin-proxy: {e}", file=sys.stderr)
        return 2
    if a.web_messages < 1:
        print("sendspin-proxy: --web-messages must be at least 1", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    view = None
    if a.view is not None:
        from .view import LiveView

        view = LiveView(every_message=a.view == "all")
    try:
        px = EmbeddedProxy(a.upstream, listen_host=a.listen[0], listen_port=a.listen[1],
                           control_host=None if a.no_control else a.control[0], control_port=a.control[1],
                           log_dir=a.log_dir, faults=faults, health_interval=a.health_interval,
                           strip_extensions=a.strip_extensions, socket_buffer=a.socket_buffer, proc=a.proc,
                           observers=[view] if view else None, web=a.web, web_max_messages=a.web_messages,
                           wire_log=a.wire_log)
    except ValueError as e:
        print(f"sendspin-proxy: {e}", file=sys.stderr)
        return 2
    if view is not None:
        view.start()
    try:
        try:
            await px.start()
        except (OSError, RuntimeError, TimeoutError) as e:
            print(f"sendspin-proxy: cannot start: {e}", file=sys.stderr)
            await px.close()
            return 3
        return await _run_until_stopped(a, px, stop)
    finally:
        if view is not None:
            view.close()


async def _run_until_stopped(a: argparse.Namespace, px: Any, stop: asyncio.Event) -> int:
    try:
        info = px.readiness(os.getpid())
        if a.ready_file is not None:
            tmp = a.ready_file.with_name(a.ready_file.name + ".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, a.ready_file)  # atomic: a reader never sees half a file
        if not a.quiet and sys.stderr.isatty():  # a person watching; orchestration reads the ready file
            print(f"sendspin-proxy: listening on {info['listen']['url']}, control {info['control']['url']}, "
                  f"upstreams {info['upstreams']} (ready in {px.startup_s:.2f} s)", file=sys.stderr, flush=True)
        if info["web"] and not a.quiet:  # the token in it is the UI's password: not in the event log
            print(f"sendspin-proxy: web UI at {info['web']['url']}", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await px.close()
    return 0


# --- control client ---------------------------------------------------------------------------


class ApiError(Exception):
    pass


def call(control: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    """One control API call; returns the decoded JSON; ApiError with the API's message."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(control.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            msg = e.reason
        raise ApiError(f"{e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ApiError(f"cannot reach the control API at {control}: {e}") from None


def client_parser() -> argparse.ArgumentParser:
    # --control is accepted before or after the subcommand (SUPPRESS: a later one wins)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control", default=argparse.SUPPRESS,
                        help="control API URL, e.g. http://127.0.0.1:9000 (or $SENDSPIN_PROXY_CONTROL)")
    ap = argparse.ArgumentParser(prog="sendspin-proxy", description="Control a running sendspin-proxy.")
    ap.add_argument("--control", default=os.environ.get("SENDSPIN_PROXY_CONTROL"),
                    help="control API URL, e.g. http://127.0.0.1:9000 (or $SENDSPIN_PROXY_CONTROL)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    fault = sub.add_parser("fault", help="list, add, update, remove faults", parents=[common])
    fsub = fault.add_subparsers(dest="action", required=True)
    fsub.add_parser("types", help="the fault catalogue with parameters", parents=[common])
    fsub.add_parser("list", help="active faults", parents=[common])
    for name in ("add", "update"):
        p = fsub.add_parser(name, help="add a fault (TYPE k=v ...)" if name == "add" else "change a fault (NAME k=v)",
                            parents=[common])
        p.add_argument("target", metavar="TYPE" if name == "add" else "NAME")
        p.add_argument("params", nargs="*", metavar="KEY=VALUE", help="parameters (values as JSON or strings)")
        if name == "add":
            p.add_argument("--name")
        p.add_argument("--direction", choices=("upstream", "downstream", "both"))
        p.add_argument("--toxicity", type=float)
        p.add_argument("--count", type=int)
        p.add_argument("--duration", type=float, help="seconds, then the fault retires")
        p.add_argument("--json-type", action="append", help="select JSON messages of this type (repeatable)")
        p.add_argument("--binary-type", type=int, action="append", help="select binary type byte (repeatable)")
        p.add_argument("--min-size", type=int)
        p.add_argument("--max-size", type=int)
        p.add_argument("--nth", type=int, help="every nth matching message")
        p.add_argument("--probability", type=float)
        p.add_argument("--seed", type=int)
        p.add_argument("--client-port", type=int, action="append",
                       help="only the connection(s) from this client TCP port (repeatable; see `connections`)")
        p.add_argument("--on-upstream", type=int, action="append", metavar="INDEX",
                       help="only connections routed to this upstream (repeatable)")
        p.add_argument("--spec", help="a whole JSON spec (merged under the flags)")
    rm = fsub.add_parser("remove", help="remove faults by name", parents=[common])
    rm.add_argument("names", nargs="+")
    fsub.add_parser("reset", help="remove every fault (transparent again)", parents=[common])
    sub.add_parser("connections", help="live connections with counters", parents=[common])
    sub.add_parser("upstreams", help="the upstream pool", parents=[common])
    ev = sub.add_parser("events", help="recent events", parents=[common])
    ev.add_argument("--since", type=int, default=0)
    ev.add_argument("--event")
    up = sub.add_parser("upstream", help="register a worker pid: upstream pid INDEX PID", parents=[common])
    up.add_argument("what", choices=("pid",))
    up.add_argument("index", type=int)
    up.add_argument("pid", type=int)
    return ap


def _spec_from(a: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(a.spec) if a.spec else {}
    for kv in a.params:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise ApiError(f"expected KEY=VALUE, got {kv!r}")
        spec[k] = _value(v)  # top level: the API routes it to params or selector by name
    for k in ("name", "direction", "toxicity", "count", "duration"):
        v = getattr(a, k, None)
        if v is not None:
            spec[k] = v
    for flag, key in (("client_port", "client_port"), ("on_upstream", "upstream")):
        v = getattr(a, flag)
        if v is not None:
            spec.setdefault("connections", {})[key] = v
    for k in SELECTOR_FLAGS:
        v = getattr(a, k)
        if v is not None:
            spec.setdefault("selector", {})[k] = v[0] if isinstance(v, list) and len(v) == 1 else v
    return spec


def _client(argv: list[str]) -> int:
    parser = client_parser()
    # KEY=VALUE may follow the flags too (argparse stops filling `params` at the first flag)
    a, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(a, "params")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        a.params += extra
    if not a.control:
        print("sendspin-proxy: --control URL (or $SENDSPIN_PROXY_CONTROL) is needed", file=sys.stderr)
        return 2
    try:
        if a.cmd == "fault":
            if a.action == "types":
                out = call(a.control, "GET", "/fault-types")
            elif a.action == "list":
                out = call(a.control, "GET", "/faults")
            elif a.action == "add":
                spec = _spec_from(a)
                spec["type"] = a.target
                out = call(a.control, "POST", "/faults", spec)
            elif a.action == "update":
                out = call(a.control, "PATCH", f"/faults/{a.target}", _spec_from(a))
            elif a.action == "remove":
                out = {"removed": [call(a.control, "DELETE", f"/faults/{n}")["removed"] for n in a.names]}
            else:
                out = call(a.control, "POST", "/reset")
        elif a.cmd == "events":
            q = f"?since={a.since}" + (f"&event={a.event}" if a.event else "")
            out = call(a.control, "GET", f"/events{q}")
        elif a.cmd == "upstream":
            out = call(a.control, "PATCH", f"/upstreams/{a.index}", {"pid": a.pid})
        else:
            out = call(a.control, "GET", f"/{a.cmd}")
    except ApiError as e:
        print(f"sendspin-proxy: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # a bad --spec
        print(f"sendspin-proxy: --spec is not valid JSON: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    if a.cmd == "fault" and a.action in ("add", "update"):
        _warn_not_applied(out["fault"])
    return 0


def _warn_not_applied(fault: dict[str, Any]) -> None:
    """A fault that cannot act on some live connection says so, where a person looks."""
    for c in fault.get("not_applied", []):
        print(f"sendspin-proxy: {fault['name']} cannot apply on connection #{c['seq']} (client port "
              f"{c['client_port']}): {c['why']}", file=sys.stderr)


CLIENT_COMMANDS = ("fault", "connections", "upstreams", "events", "upstream")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(c in argv[:3] for c in CLIENT_COMMANDS) and "--upstream" not in argv:
        return _client(argv)
    a = serve_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR if a.quiet else logging.WARNING,
                        format="sendspin-proxy %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(a))


if __name__ == "__main__":
    sys.exit(main())
