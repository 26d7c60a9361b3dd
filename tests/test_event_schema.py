"""The event schema (harness/protocol/eventschema.py) is the one list of events:
writers cannot emit, and readers cannot look for, anything it does not declare,
and README's event-log table is the schema."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.events import Events
from harness.protocol import EventLog
from harness.protocol.eventschema import EVENTS, UndeclaredEvent, markdown_table

ROOT = Path(__file__).resolve().parent.parent
WRITERS = ("harness", "proxy", "reference_server", "tests/bad_servers")
NOT_FIELDS = {"session", "t_us", "counted"}  # emit/record arguments that are not record fields
README_BEGIN, README_END = "<!-- event-schema:begin -->", "<!-- event-schema:end -->"


def emit_calls(root: Path) -> Iterator[tuple[str, str, set[str]]]:
    """(where, event, keyword fields) of every `.emit("name", ...)` and fault `record(...)` in the writers."""
    for package in WRITERS:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                fields = {k.arg for k in node.keywords if k.arg is not None} - NOT_FIELDS
                where = f"{path.relative_to(root)}:{node.lineno}"
                if node.func.attr == "emit" and node.args and isinstance(node.args[0], ast.Constant) \
                        and isinstance(node.args[0].value, str):
                    yield where, node.args[0].value, fields
                elif node.func.attr == "emit" and node.args and isinstance(node.args[0], ast.IfExp):
                    for branch in (node.args[0].body, node.args[0].orelse):  # "a" if x else "b"
                        if isinstance(branch, ast.Constant):
                            yield where, branch.value, fields
                elif node.func.attr == "record" and package == "proxy":  # a fault's application: event `fault`
                    yield where, "fault", fields


def undeclared(root: Path) -> list[str]:
    problems = []
    for where, event, fields in emit_calls(root):
        spec = EVENTS.get(event)
        if spec is None:
            problems.append(f"{where}: event {event!r} is not declared")
        elif fields - spec.field_names:
            problems.append(f"{where}: event {event!r} has undeclared field(s) {sorted(fields - spec.field_names)}")
    return problems


def test_every_emit_in_the_writers_is_declared() -> None:
    calls = list(emit_calls(ROOT))
    assert len({event for _, event, _ in calls}) >= 40, "the scan found too few emit calls: is it still looking?"
    assert undeclared(ROOT) == []


def test_the_scan_reports_an_undeclared_event_and_field(tmp_path: Path) -> None:
    writer = tmp_path / "reference_server"
    writer.mkdir()
    (writer / "x.py").write_text('log.emit("recv", "s1", type="client/time", colour="red")\n'
                                 'log.emit("recieve", "s1")\n')
    for package in WRITERS[:2] + WRITERS[3:]:
        (tmp_path / package).mkdir(parents=True)
    assert undeclared(tmp_path) == ["reference_server/x.py:1: event 'recv' has undeclared field(s) ['colour']",
                                    "reference_server/x.py:2: event 'recieve' is not declared"]


def test_a_writer_cannot_emit_an_undeclared_event_or_field(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "x.jsonl", "server")
    log.emit("recv", "s1", type="client/time", bytes=10, client_transmitted=5)
    with pytest.raises(UndeclaredEvent, match="'recieve' is not declared"):
        log.emit("recieve", "s1")
    with pytest.raises(UndeclaredEvent, match=r"field\(s\) \['colour'\]"):
        log.emit("recv", "s1", colour="red")
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert [r["event"] for r in lines] == ["recv"], "a refused event must not be written"


def test_a_reader_cannot_select_an_undeclared_event_or_field() -> None:
    events = Events([{"t_us": 1, "proc": "server", "session": "s1", "event": "recv", "type": "client/time"}])
    assert len(events.select("recv", type="client/time")) == 1
    with pytest.raises(UndeclaredEvent):
        events.select("worker_exited")
    with pytest.raises(UndeclaredEvent):
        events.select("recv", client_time=1)


def test_readme_event_table_is_the_schema() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert README_BEGIN in readme and README_END in readme, "README lost its event-schema markers"
    table = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert table == markdown_table(), "README's event table differs from the schema; paste markdown_table():\n" \
        + markdown_table()

