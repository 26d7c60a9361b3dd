"""`sendspin-proxy`: run the fault proxy, or talk to a running one's control API.

    sendspin-proxy --listen 127.0.0.1:0 --upstream ws://127.0.0.1:8927 [--upstream ...]
                   [--control 127.0.0.1:0 | --no-control] [--plan FILE] [--ready-file F] [--log-dir D]
                   [--health-interval 0.1] [--keep-extensions] [--quiet] [--wire-log] [--server-dials]
                   [--view [all]] [--web [HOST:PORT]] [--web-messages 200]
                   [--noise opaque|terminate] [--noise-keys FILE]

    sendspin-proxy fault types [TYPE]|list|add|update|remove|reset --control URL [--json] ...
    sendspin-proxy connections|upstreams|events --control URL [--json]
    sendspin-proxy upstream pid INDEX PID --control URL [--json]

The control URL may also come from $SENDSPIN_PROXY_CONTROL. The subcommands print
tables for people; `--json` prints the API's answer instead, for programs. Exit codes:
0 ok, 1 the API answered with an error (or could not be reached), 2 usage, 3 the proxy
could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from harness.protocol import now_us

from .describe import (
    ARROW,
    ENDED,
    close_summary,
    fault_applied,
    fault_purpose,
    fault_spec_text,
    fields_text,
    size_text,
)

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
                    help="an upstream server (with --server-dials: a listening client); repeat for a pool "
                         "(least connections)")
    ap.add_argument("--server-dials", action="store_true",
                    help="server-initiated connections: the Sendspin server dials the proxy and the proxy dials "
                         "the upstream, a listening client. Directions keep their Sendspin meaning (downstream = "
                         "server to client); the upstream is never health-probed nor taken out of the pool")
    ap.add_argument("--noise", choices=("opaque", "terminate"), default="opaque",
                    help="noise sessions: opaque (relay the ciphertext; network faults only) or terminate (complete "
                         "the handshake with each peer, as a TLS-terminating proxy does, so every fault acts on "
                         "the plaintext; the server sees the proxy's key for each client unless --noise-keys "
                         "holds the client's own)")
    ap.add_argument("--noise-keys", type=Path, metavar="FILE",
                    help="with --noise terminate: JSON {identities: [private keys], psks: [{key, category, "
                         "client_id, server_id}]}, base64url (proxy/relay/noise_keys.py); without it, unpaired "
                         "access only (the Sentinel PSK)")
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
    from .relay.noise_keys import KeysFileError, NoiseKeys

    try:
        faults = load_plan(a.plan) if a.plan else []
        noise_keys = NoiseKeys.load(a.noise_keys) if a.noise == "terminate" else None
    except (FaultSpecError, KeysFileError, OSError) as e:
        print(f"sendspin-proxy: {e}", file=sys.stderr)
        return 2
    if a.noise_keys is not None and a.noise != "terminate":
        print("sendspin-proxy: --noise-keys is for --noise terminate", file=sys.stderr)
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
                           wire_log=a.wire_log, server_dials=a.server_dials, noise_keys=noise_keys)
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


class UsageError(Exception):
    pass


Render = Callable[[Any, argparse.Namespace], str]  # an API answer for a person


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
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON answer instead of a table")
    ap = argparse.ArgumentParser(prog="sendspin-proxy", description="Control a running sendspin-proxy.")
    ap.add_argument("--control", default=os.environ.get("SENDSPIN_PROXY_CONTROL"),
                    help="control API URL, e.g. http://127.0.0.1:9000 (or $SENDSPIN_PROXY_CONTROL)")
    ap.add_argument("--json", action="store_true", help="print the API's JSON answer instead of a table")
    sub = ap.add_subparsers(dest="cmd", required=True)
    fault = sub.add_parser("fault", help="list, add, update, remove faults", parents=[common])
    fsub = fault.add_subparsers(dest="action", required=True)
    types = fsub.add_parser("types", help="the fault catalogue with parameters", parents=[common])
    types.add_argument("type", nargs="?", metavar="TYPE", help="one type in full: its description and parameters")
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
    ev.add_argument("--since", type=int, default=0, help="only events after this seq")
    ev.add_argument("--event", help="only this event (fault, close, fault_added, ...)")
    ev.add_argument("--limit", type=int, help="at most this many (the API's default: 1000)")
    up = sub.add_parser("upstream", help="register a worker pid: upstream pid INDEX PID", parents=[common])
    up.add_argument("what", choices=("pid",))
    up.add_argument("index", type=int)
    up.add_argument("pid", type=int)
    return ap


def _spec_from(a: argparse.Namespace) -> dict[str, Any]:
    try:
        spec: dict[str, Any] = json.loads(a.spec) if a.spec else {}
    except ValueError as e:
        raise UsageError(f"--spec is not valid JSON: {e}") from None
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
        out, render = _request(a)
        text = json.dumps(out, indent=2) if a.json else render(out, a)
    except ApiError as e:
        print(f"sendspin-proxy: {e}", file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"sendspin-proxy: {e}", file=sys.stderr)
        return 2
    _print(text)
    if a.cmd == "fault" and a.action in ("add", "update"):
        _warn_not_applied(out["fault"])
    return 0


def _warn_not_applied(fault: dict[str, Any]) -> None:
    """A fault that cannot act on some live connection says so, where a person looks."""
    for c in fault.get("not_applied", []):
        print(f"sendspin-proxy: {fault['name']} cannot apply on connection #{c['seq']} (client port "
              f"{c['client_port']}): {c['why']}", file=sys.stderr)


def _request(a: argparse.Namespace) -> tuple[Any, Render]:
    """The API call a subcommand makes: its answer, and how to show that to a person."""
    if a.cmd == "fault":
        if a.action == "types":
            return _one_type(call(a.control, "GET", "/fault-types"), a.type)
        if a.action == "list":
            return call(a.control, "GET", "/faults"), _show_faults
        if a.action == "add":
            spec = _spec_from(a)
            spec["type"] = a.target
            return call(a.control, "POST", "/faults", spec), _show_fault
        if a.action == "update":
            return call(a.control, "PATCH", f"/faults/{quote(a.target)}", _spec_from(a)), _show_fault
        if a.action == "remove":
            return _remove(a)
        return call(a.control, "POST", "/reset"), _show_reset
    if a.cmd == "events":
        q = f"?since={a.since}" + (f"&event={quote(a.event)}" if a.event else "")
        q += f"&limit={a.limit}" if a.limit is not None else ""
        return call(a.control, "GET", f"/events{q}"), _show_events
    if a.cmd == "upstream":
        return call(a.control, "PATCH", f"/upstreams/{a.index}", {"pid": a.pid}), _show_upstream
    if a.cmd == "connections":
        return call(a.control, "GET", "/connections"), _show_connections
    return call(a.control, "GET", "/upstreams"), _show_upstreams


def _remove(a: argparse.Namespace) -> tuple[Any, Render]:
    answers = [call(a.control, "DELETE", f"/faults/{quote(n)}") for n in a.names]

    def show(out: Any, a: argparse.Namespace) -> str:  # with how often each acted, which the JSON leaves out
        return "\n".join(f"removed {r['removed']} (applied {r['applied']}×)" for r in answers)

    return {"removed": [r["removed"] for r in answers]}, show


def _print(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `| head` stopped reading: nothing more to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# --- tables for people ------------------------------------------------------------------------

Cell = str | list[str]  # a list is a cell of several lines
SHORT_ID = 8  # a connection's id (flow id) in tables: enough to tell live ones apart


def table(header: Sequence[str], rows: Sequence[Sequence[Cell]], right: Collection[int] = ()) -> str:
    """Aligned columns two spaces apart; a row is as tall as its tallest cell; the columns in
    `right` (numbers) are right-aligned."""
    grid = [[c if isinstance(c, list) else [c] for c in row] for row in rows]
    widths = [max([len(h)] + [len(ln) for row in grid for ln in row[i]]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(header)]
    for row in grid:
        for k in range(max(1, *(len(c) for c in row))):
            out.append(line([c[k] if k < len(c) else "" for c in row]))
    return "\n".join(out)


def _value_text(v: Any) -> str:
    """A value as it is typed after KEY= (JSON's null/true/false, strings bare)."""
    if isinstance(v, str):
        return v if v else '""'
    if isinstance(v, list):
        return ",".join(_value_text(x) for x in v)
    return json.dumps(v)


def _param_lines(params: dict[str, Any]) -> list[str]:
    """`name=default (choice|choice)` per parameter of a type; `name (required)` without a default."""
    out = []
    for name, p in params.items():
        text = f"{name}={_value_text(p['default'])}" if "default" in p else f"{name} (required)"
        if p.get("choices"):
            text += " (" + "|".join(map(_value_text, p["choices"])) + ")"
        out.append(text)
    return out or ["-"]


def _acts_on(t: dict[str, Any]) -> str:
    if t.get("selector"):
        return "selected msgs"
    return "every byte" if t.get("byte_level") else "connections"


def _modes(t: dict[str, Any]) -> list[str]:
    """The modes a type means something in; `*`: there it means something other than its description."""
    return [m + ("*" if note else "") for m, note in t.get("modes", {}).items()] or ["-"]


def types_table(types: dict[str, Any], selector: Sequence[str]) -> str:
    rows = [[name, t["default_direction"], _acts_on(t), _modes(t), fault_purpose(name, t.get("description", "")),
             _param_lines(t["params"])] for name, t in types.items()]
    return (table(["TYPE", "DIRECTION", "ACTS ON", "MODES", "WHAT IT DOES", "PARAMETERS (default)"], rows)
            + f"\n\nselected msgs: choose them with {', '.join(selector)} (flags --json-type, --nth, ...)."
            + "\nmodes: what the proxy can read of a connection: legacy (plain messages), noise-opaque (a noise "
              "session:\nciphertext after its handshake, no keys); a fault is refused on a connection in a mode it "
              "lacks.\n*: it means something narrower there (sendspin-proxy fault types TYPE says what)."
            + "\nOne type in full: sendspin-proxy fault types TYPE")


def _range(p: dict[str, Any]) -> str:
    bits = [f">= {p['min']}" if "min" in p else "", f"<= {p['max']}" if "max" in p else ""]
    return " ".join(b for b in bits if b) or "-"


def type_text(name: str, t: dict[str, Any]) -> str:
    modes = [f"modes: {', '.join(t.get('modes', {})) or 'none'}"]
    modes += [textwrap.fill(f"in {m}: {note}", 88, subsequent_indent="  ") for m, note in t.get("modes", {}).items()
              if note]
    modes += [textwrap.fill(f"not in {m}: {why}", 88, subsequent_indent="  ")
              for m, why in t.get("refused_in", {}).items()]
    head = (f"{name}: {fault_purpose(name, t.get('description', ''))}\n"
            f"direction: {t['default_direction']} by default (allowed: {', '.join(t['directions'])}); "
            f"acts on: {_acts_on(t)}\n" + "\n".join(modes) + "\n\n" + textwrap.fill(t.get("description", ""), 88))
    rows = [[p, spec["type"].removeprefix("an ").removeprefix("a ") + (" or null" if spec.get("nullable") else ""),
             _value_text(spec["default"]) if "default" in spec else "(required)",
             "|".join(map(_value_text, spec["choices"])) if spec.get("choices") else _range(spec),
             spec.get("help", "")] for p, spec in t["params"].items()]
    if not rows:
        return head + "\n\nno parameters"
    return head + "\n\n" + table(["PARAMETER", "TYPE", "DEFAULT", "ALLOWED", "WHAT"], rows)


def _one_type(out: dict[str, Any], name: str | None) -> tuple[Any, Render]:
    """`fault types [TYPE]`: the catalogue, or one entry of it (its JSON too)."""
    if name is None:
        return out, lambda out, a: types_table(out["types"], out.get("selector", []))
    if name not in out["types"]:
        raise UsageError(f"unknown fault type {name!r} (known: {', '.join(out['types'])})")
    return out["types"][name], lambda t, a: type_text(name, t)


def _proxy_now_us(control: str) -> int | None:
    """The proxy's clock now (CLOCK_MONOTONIC, µs): ours, when the proxy runs on this
    machine (a loopback control URL); None when it may be another machine's."""
    host = urlsplit(control).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return now_us() if loopback else None


def _seconds(s: float) -> str:
    if s < 100:
        return f"{s:.1f} s"
    m, rest = divmod(int(s), 60)
    return f"{m} min {rest} s" if rest else f"{m} min"


def _remaining(f: dict[str, Any], now: int | None) -> list[str]:
    """How long a fault has left: applications (count) and time (duration)."""
    out = []
    if f.get("count") is not None:
        out.append(f"{f['count'] - f['applied']} of {f['count']} times")
    if f.get("duration") is not None:
        if now is not None and f.get("added_us") is not None:
            left = max(0.0, f["duration"] - (now - f["added_us"]) / 1e6)
            out.append(f"{_seconds(left)} of {_seconds(f['duration'])}")
        else:  # another machine's clock: only the total is known
            out.append(f"{_seconds(f['duration'])} from its start")
    return out or ["until removed"]


def _selector_lines(f: dict[str, Any]) -> list[str]:
    """Which messages and connections a fault acts on: its selector, connection filter, toxicity."""
    out = [f"{k}={_value_text(v)}" for k, v in (f.get("selector") or {}).items()]
    out += [f"{k}={_value_text(v)}" for k, v in (f.get("connections") or {}).items()]
    if f.get("toxicity", 1.0) != 1.0:
        out.append(f"toxicity={f['toxicity']}")
    return out or ["all"]


def faults_table(faults: list[dict[str, Any]], control: str) -> str:
    if not faults:
        return "no faults: the proxy passes everything through untouched"
    now = _proxy_now_us(control)
    rows = [[f["name"], f["type"], f"{f['direction']} {ARROW.get(f['direction'], '')}", _selector_lines(f),
             [f"{k}={_value_text(v)}" for k, v in f["params"].items()] or ["-"], str(f["applied"]),
             _remaining(f, now)] for f in faults]
    return table(["NAME", "TYPE", "DIRECTION", "SELECTOR", "PARAMETERS", "APPLIED", "REMAINING"], rows, right={5})


def _show_faults(out: dict[str, Any], a: argparse.Namespace) -> str:
    return faults_table(out["faults"], a.control)


def _show_fault(out: dict[str, Any], a: argparse.Namespace) -> str:
    return faults_table([out["fault"]], a.control)


def _show_reset(out: dict[str, Any], a: argparse.Namespace) -> str:
    names = out["removed"]
    return f"removed {len(names)} fault(s): {', '.join(names)}" if names else "no faults were active"


def _direction_lines(d: dict[str, Any]) -> list[str]:
    """One direction of a live connection: traffic, and what holds it up."""
    out = [f"{d['messages']} msgs {size_text(int(d['bytes']))}"]
    if d.get("held"):
        out.append("held: " + ", ".join(map(str, d["held"])))
    if d.get("withheld_bytes"):
        out.append(f"withheld {size_text(int(d['withheld_bytes']))}")
    return out


def _state(c: dict[str, Any]) -> str:
    ended = [f"{side} {ENDED.get(str(c[side].get('ended')), c[side].get('ended'))}" for side in ("client", "server")
             if (c.get(side) or {}).get("ended") not in (None, "open")]
    return ", ".join(ended) or "open"


def _profile(c: dict[str, Any]) -> str:
    """legacy, unknown, or noise with what the proxy does with it: noise (opaque), noise (terminated)."""
    profile, mode = c.get("profile") or "-", c.get("mode")
    return f"{profile} ({mode.removeprefix('noise-')})" if profile == "noise" and mode else profile


def connections_table(conns: list[dict[str, Any]]) -> str:
    if not conns:
        return "no live connections"
    rows = []
    for c in conns:
        faults = [f"{ARROW[d]} {', '.join(c[d]['faults'])}" for d in ("upstream", "downstream") if c[d].get("faults")]
        upstream = f"{c['upstream_index']} {c['upstream_url']}" if c.get("upstream_index") is not None else "-"
        rows.append([f"#{c['seq']}", c["id"][:SHORT_ID], str(c["client_port"]), upstream, c.get("path") or "",
                     _profile(c), _seconds(c["seconds"]), _state(c), _direction_lines(c["upstream"]),
                     _direction_lines(c["downstream"]), faults or ["-"]])
    return table(["#", "ID", "CLIENT PORT", "UPSTREAM", "PATH", "PROFILE", "AGE", "STATE", "C→S", "S→C", "FAULTS"],
                 rows, right={0, 2})


def _show_connections(out: dict[str, Any], a: argparse.Namespace) -> str:
    return connections_table(out["connections"])


def _show_upstreams(out: dict[str, Any], a: argparse.Namespace) -> str:
    return upstreams_table(out["upstreams"])


def _show_upstream(out: dict[str, Any], a: argparse.Namespace) -> str:
    return upstreams_table([out["upstream"]])


def upstreams_table(ups: list[dict[str, Any]]) -> str:
    rows = [[str(u["index"]), u["url"], "up" if u["alive"] else "down", str(u["active"]), str(u["total"]),
             str(u["failures"]), str(u["pid"]) if u.get("pid") is not None else "-", u.get("last_error") or "-"]
            for u in ups]
    return table(["#", "URL", "STATE", "ACTIVE", "TOTAL", "FAILURES", "PID", "LAST ERROR"], rows,
                 right={0, 3, 4, 5, 6})


EVENTS_LIMIT = 1000  # GET /events answers this many when not told
EVENT_BASE = ("seq", "t_us", "proc", "session", "event")


def _event_details(e: dict[str, Any]) -> str:
    ev = e.get("event")
    if ev == "fault":
        return f"{ARROW.get(e.get('direction', ''), '')} {fault_applied(e)}".strip()
    if ev == "fault_added":
        return fault_spec_text(e.get("spec") or {})
    if ev == "close":
        return close_summary(e)
    return fields_text(e, EVENT_BASE)


def _clock_text(t_us: int, now: int | None) -> str:
    """An event's time on the wall clock (the proxy's own clock when it is not ours)."""
    if now is None:
        return f"{t_us / 1e6:.3f}"
    t = time.time() - (now - t_us) / 1e6
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _show_events(out: dict[str, Any], a: argparse.Namespace) -> str:
    return events_table(out, a.control, a.limit or EVENTS_LIMIT)


def events_table(out: dict[str, Any], control: str, limit: int = EVENTS_LIMIT) -> str:
    events = out["events"]
    if not events:
        return f"no events (last seq {out['last']})"
    # the API answers the oldest `limit` events after `since`: a full page may have more behind it
    shown = events[-1]["seq"]
    foot = (f"more may follow seq {shown}: `events --since {shown}`" if len(events) >= limit
            else f"last seq {out['last']}: `events --since {out['last']}` shows only what comes next")
    now = _proxy_now_us(control)
    rows = [[str(e["seq"]), _clock_text(int(e["t_us"]), now), (e.get("session") or "-")[:SHORT_ID], str(e["event"]),
             _event_details(e)] for e in events]
    return table(["SEQ", "TIME", "CONN", "EVENT", "DETAILS"], rows, right={0}) + "\n\n" + foot


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
