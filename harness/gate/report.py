"""The gate's static HTML report: a matrix of every case's verdict, and a page per case.

    REPORT_DIR/index.html        group × case matrix, coloured by verdict
    REPORT_DIR/cases/ID.html     the case: expectation, figures against bounds, close
                                 verdict, replay command, timeline plot and excerpt
    REPORT_DIR/cases/ID.svg      its timeline, plotted from the event logs when it ran

With `--client-initiator both` each case ran twice: its pages are ID-client and ID-server.

Plots are drawn with matplotlib (Agg, no display) while the case's logs still exist;
the pages are written from results.json at the end of the run. Nothing is fetched from
the network: the report opens from disk.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..events import Events

COLOURS = {"OK": "#2e7d32", "NON-STRICT": "#f9a825", "FAILED": "#c62828", "UNIMPLEMENTED": "#757575",
           "INFORMATIONAL": "#1565c0", "INCONCLUSIVE": "#6a1b9a", "SKIPPED": "#9e9e9e",
           "ERROR": "#212121"}
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.verdict{color:#fff;font-weight:600;padding:.15em .5em;border-radius:3px;white-space:nowrap}
.matrix td{min-width:9em}.matrix a{color:#fff;text-decoration:none;display:block}
pre{background:#f5f5f5;padding:.8em;overflow-x:auto;font-size:12px}
.fail{color:#c62828;font-weight:600}.small{color:#666;font-size:12px}
"""
MAX_POINTS = 1500  # per series: the plot stays light whatever the case length
MATRIX_COLUMNS = 6  # cells in a row of the matrix: a group with more cases goes on in the rows below


def _badge(verdict: str, text: str | None = None) -> str:
    colour = COLOURS.get(verdict, "#444")
    return f'<span class="verdict" style="background:{colour}">{html.escape(text or verdict)}</span>'


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


# --- the timeline plot ------------------------------------------------------------------------------

def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    step = max(1, len(points) // MAX_POINTS)
    return points[::step]


def timeline_series(ev: Events, start_us: int) -> dict[str, Any]:
    """What the plot shows, in seconds since `start_us`, from a case's event logs."""
    def s(t_us: int) -> float:
        return (t_us - start_us) / 1e6

    pending: dict[str, int] = {}
    round_trips = []
    for r in sorted(ev.select("wire", kind="text"), key=lambda r: r["t_us"]):
        if r.get("type") == "client/time" and r["direction"] == "upstream":
            pending[r["session"]] = r["t_us"]
        elif r.get("type") == "server/time" and r["direction"] == "downstream" and r["session"] in pending:
            sent = pending.pop(r["session"])
            round_trips.append((s(r["t_us"]), (r["t_us"] - sent) / 1000))
    lead = [(s(r["t_us"]), (r["ts_us"] - r["t_us"]) / 1000)
            for r in ev.select("wire", direction="downstream", kind="binary") if "ts_us" in r]
    held = [(s(r["t_us"]), r["held"] / 1024) for r in ev.select("session_stats")]
    unread = [(s(r["t_us"]), r["bytes"] / 1024) for r in ev.select("client_queue")]
    flows: dict[str, list[float]] = {}
    for r in ev.select("wire"):
        flows.setdefault(r["session"], [s(r["t_us"]), s(r["t_us"])])[1] = s(r["t_us"])
    faults = [(s(r["t_us"]), r["spec"].get("type", "?")) for r in ev.select("fault_added")]
    acted = sorted({round(s(r["t_us"]), 1) for r in ev.select("fault")})
    return {"round_trips": _thin(round_trips), "lead": _thin(lead), "held": _thin(held), "unread": _thin(unread),
            "connections": list(flows.values()), "faults": faults, "acted": acted[:MAX_POINTS]}


def plot_timeline(series: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; the same output on every machine
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(10, 8), sharex=True, constrained_layout=True)
    rt, lead, load, conns = axes
    if series["round_trips"]:
        rt.plot(*zip(*series["round_trips"], strict=True), ".", ms=3, color="#1565c0")
    rt.set_ylabel("time sync\nround trip (ms)")
    if series["lead"]:
        lead.plot(*zip(*series["lead"], strict=True), lw=1, color="#2e7d32")
    lead.axhline(0, color="#c62828", lw=0.8)
    lead.set_ylabel("audio lead at\nthe proxy (ms)")
    for key, label, colour in (("held", "held by the server", "#6a1b9a"),
                               ("unread", "unread by the client", "#ef6c00")):
        if series[key]:
            load.step(*zip(*series[key], strict=True), where="post", lw=1, label=label, color=colour)
    load.set_ylabel("bytes waiting\n(KiB)")
    load.set_ylim(bottom=0)
    if series["held"] or series["unread"]:
        load.legend(loc="upper left", fontsize=8)
    for n, (begin, end) in enumerate(series["connections"]):
        conns.plot([begin, end], [n + 1, n + 1], lw=6, solid_capstyle="butt", color="#455a64")
    conns.set_ylabel("connections")
    conns.set_ylim(0, max(2, len(series["connections"]) + 1))
    conns.set_xlabel("seconds since the client was started")
    for ax in axes:
        for t, _ in series["faults"]:
            ax.axvline(t, color="#c62828", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    for t, kind in series["faults"]:
        rt.annotate(kind, (t, 1), xycoords=("data", "axes fraction"), fontsize=8, color="#c62828",
                    rotation=90, va="top", ha="right")
    if series["acted"]:
        conns.plot(series["acted"], [0.3] * len(series["acted"]), "|", color="#c62828", ms=8, label="fault acted")
        conns.legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --- the pages ------------------------------------------------------------------------------------

def _key(case: dict[str, Any], document: dict[str, Any]) -> str:
    """The name of a case's page: its id, and its initiator where the run had both."""
    both = document["peer"].get("initiator") == "both"
    return f"{case['id']}-{case['peer'].get('initiator', 'client')}" if both else case["id"]


def write_report(directory: Path, document: dict[str, Any], groups: dict[int, str]) -> Path:
    cases = document["cases"]
    (directory / "cases").mkdir(parents=True, exist_ok=True)
    for case in cases:
        (directory / "cases" / f"{_key(case, document)}.html").write_text(_case_page(case, document),
                                                                          encoding="utf-8")
    index = directory / "index.html"
    index.write_text(_index(document, groups), encoding="utf-8")
    return index


def _index(document: dict[str, Any], groups: dict[int, str]) -> str:
    peer = document["peer"]
    by_group: dict[int, list[dict[str, Any]]] = {}
    for case in document["cases"]:
        by_group.setdefault(case["group"], []).append(case)
    width = min(MATRIX_COLUMNS, max((len(v) for v in by_group.values()), default=1))
    rows = []
    for group, name in groups.items():
        cells = []
        for case in by_group.get(group, []):
            verdict, key = case["verdict"], _key(case, document)
            label = f"{key} {verdict}" + (" (known)" if case["known_failure"] else "")
            cells.append(f'<td style="background:{COLOURS.get(verdict, "#444")}" title="{html.escape(case["title"])}">'
                         f'<a href="cases/{key}.html">{html.escape(label)}</a></td>')
        lines = [cells[i:i + width] for i in range(0, len(cells), width)] or [[]]
        for n, line in enumerate(lines):
            head = f'<th rowspan="{len(lines)}">{group} {html.escape(name)}</th>' if n == 0 else ""
            rows.append(f"<tr>{head}{''.join(line)}{'<td></td>' * (width - len(line))}</tr>")
    summary = " ".join(_badge(v, f"{n} {v}") for v, n in sorted(document["summary"].items()))
    listing = "".join(
        f'<tr><td><a href="cases/{_key(c, document)}.html">{_key(c, document)}</a></td><td>{_badge(c["verdict"])}</td>'
        f'<td>{html.escape(c["title"])}</td><td>{c["severity"]}</td>'
        f'<td>{html.escape(c["close"]["summary"] if c["close"] else "")}</td>'
        f'<td class="{"fail" if c["verdict"] == "FAILED" else ""}">{html.escape(c["reason"])}</td></tr>'
        for c in document["cases"])
    opened = "the client, and by the server (each case twice)" if peer["initiator"] == "both" else \
        f"the {peer['initiator']}"
    kind = " (a conformance client adapter)" if peer.get("adapter") else ""
    listen = (f"<br><b>Listening (server-initiated):</b> <code>{html.escape(peer['listen_command'])}</code>"
              if peer.get("listen_command") else "")
    body = (f"<h1>Sendspin {peer['side']} gate</h1>"
            f"<p><b>Under test{kind}:</b> <code>{html.escape(peer['command'])}</code>{listen}<br>"
            f"<b>Declared:</b> roles {html.escape(', '.join(peer['roles']))}; codecs "
            f"{html.escape(', '.join(peer['codecs']))}; connection opened by {opened}<br>"
            f"<b>Profile:</b> {document['profile']}{' (strict)' if document['strict'] else ''}; "
            f"<b>wire profile:</b> {html.escape(document['peer'].get('profile', 'legacy'))}</p>"
            f"<p>{summary}</p><h2>Matrix</h2><table class=\"matrix\">{''.join(rows)}</table>"
            f"<h2>Cases</h2><table><tr><th>case</th><th>verdict</th><th>title</th><th>severity</th>"
            f"<th>close</th><th>reason</th></tr>{listing}</table>")
    return _page(f"Sendspin {peer['side']} gate", body)


def _rows(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def _case_page(case: dict[str, Any], document: dict[str, Any]) -> str:
    figures = "".join(f'<tr><td class="{"" if f["holds"] else "fail"}">{"ok" if f["holds"] else "FAIL"}</td>'
                      f"<td>{html.escape(f['text'])}</td></tr>" for f in case["figures"]) or "<tr><td>none</td></tr>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in case["notes"])
    plot = (f'<h2>Timeline</h2><img src="{Path(case["plot"]).name}" alt="timeline of case {case["id"]}" width="900">'
            if case.get("plot") else "")
    head = _rows([
        ("verdict", _badge(case["verdict"]) + (f" known failure: {html.escape(case['known_failure'])}"
                                               if case["known_failure"] else "")),
        ("severity", case["severity"]), ("connection opened by", case["peer"].get("initiator", "client")),
        ("source", html.escape(case["source"])),
        ("expectation", html.escape(case["expectation"])), ("reason", html.escape(case["reason"]) or "—"),
        ("close", html.escape(case["close"]["summary"]) if case["close"] else "—"),
        ("client exit", html.escape(str(case["peer"].get("exit", {}).get("stopped", "")))),
        ("replay", f"<code>{html.escape(case['replay'])}</code>"), ("seconds", str(case["seconds"]))])
    body = (f'<p class="small"><a href="../index.html">← all cases</a></p>'
            f"<h1>{_key(case, document)} {html.escape(case['title'])}</h1><table>{head}</table>"
            f"<h2>Figures</h2><table>{figures}</table>" + (f"<ul>{notes}</ul>" if notes else "") + plot +
            f"<h2>Event log excerpt</h2><pre>{html.escape(case['timeline'])}</pre>")
    return _page(f"case {_key(case, document)}", body)
