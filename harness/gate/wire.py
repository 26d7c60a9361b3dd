"""Reading the proxy's wire log (`--wire-log`: one `wire` event per message that crossed it).

The peer's connections as the proxy saw them, whichever gate: the order of messages
across both directions, and how each connection ended (the close verdict).
"""

from __future__ import annotations

from ..events import Events, Record
from .verdict import CloseVerdict

# faults that end a connection themselves: then the proxy, not a peer, closed it
ENDING_FAULTS = frozenset({"close", "reset_peer", "down", "timeout", "limit_data", "slow_close"})


def flows(ev: Events) -> list[str]:
    """The peer's connections through the proxy, in the order they began."""
    return list(dict.fromkeys(r["session"] for r in ev.select("wire")))


def data_messages(ev: Events, flow: str, direction: str) -> list[Record]:
    return [r for r in ev.select("wire", session=flow, direction=direction) if r["kind"] in ("text", "binary")]


def first_wire(ev: Events, flow: str, direction: str, json_type: str) -> Record | None:
    return next(iter(ev.select("wire", session=flow, direction=direction, type=json_type)), None)


def describe(r: Record) -> str:
    return f"{r['kind']} {r.get('type', '')} ({r['size']} bytes)".replace("  ", " ")


def close_verdict(ev: Events, flow: str, stop_us: int, quiet_us: int) -> CloseVerdict:
    """How connection `flow` ended before the harness stopped the client at `stop_us`.

    clean: a close frame went each way; abnormal: the connection ended without that;
    silent: still open, but the client sent nothing in its last `quiet_us`; open: still
    open and talking. A close frame first sent by a peer names it; a connection a fault
    ended was closed by the proxy; a worker_crash'd upstream counts as the server."""
    end = next((r for r in ev.select("close", proc="proxy", session=flow) if r["t_us"] < stop_us), None)
    closes = [r for r in ev.select("wire", session=flow, kind="close") if r["t_us"] < stop_us]
    if end is None:
        sent = [r["t_us"] for r in ev.select("wire", session=flow, direction="upstream") if r["t_us"] < stop_us]
        quiet = not sent or stop_us - sent[-1] > quiet_us
        return CloseVerdict("", None, "silent" if quiet else "open")
    acted = [r for r in ev.select("fault", session=flow) if r["t_us"] <= end["t_us"]]
    ending = [r for r in acted if r["type"] in ENDING_FAULTS]
    if ending:  # its close frames (if any) are not on the wire log: that shows what the peers sent
        return CloseVerdict("proxy", ending[0].get("code"), "clean" if closes else "abnormal",
                            f"the {ending[0]['type']} fault ended it")
    if closes:
        first = closes[0]
        both = {r["direction"] for r in closes} == {"upstream", "downstream"}
        return CloseVerdict("client" if first["direction"] == "upstream" else "server", first.get("code"),
                            "clean" if both else "abnormal", first.get("reason", ""))
    if any(r["type"] == "worker_crash" for r in acted):
        return CloseVerdict("server", None, "abnormal", "its worker was killed")
    client, server = end.get("client") or {}, end.get("server") or {}
    by = "client" if client.get("ended") in ("eof", "rst", "error") else \
        "server" if server.get("ended") in ("eof", "rst", "error") else ""
    how = (client if by == "client" else server).get("ended", "")
    return CloseVerdict(by, None, "abnormal", f"TCP {how}" if how else "")
