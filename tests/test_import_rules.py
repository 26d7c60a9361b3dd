"""The import rules of docs/architecture.md, read from the source (every import,
also those under TYPE_CHECKING or inside functions)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (folder, forbidden module prefixes, why)
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("proxy/relay", ("proxy.faults",), "the relay knows no faults; faults reach it through relay/connection.py"),
    ("proxy", ("reference_server",), "proxy and reference_server meet only over sockets"),
    ("reference_server", ("proxy",), "proxy and reference_server meet only over sockets"),
    ("proxy", ("harness",), "proxy may import only harness.protocol of the harness"),
    ("reference_server", ("harness",), "reference_server may import only harness.protocol of the harness"),
    ("harness/protocol", ("asyncio", "socket", "selectors", "ssl", "socketserver", "aiohttp", "mitmproxy",
                          "websockets.asyncio", "websockets.sync", "websockets.legacy", "websockets.client",
                          "websockets.server", "harness"),
     "the protocol core is sans-I/O (no event loop, no sockets) and stands on its own"),
    ("harness", ("proxy", "reference_server"), "the harness starts the proxy and the server as processes"),
]
ALLOWED = ("harness.protocol",)  # the one part of the harness everyone may import


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; relative imports resolved."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            for alias in node.names:  # `from proxy import faults` imports proxy.faults
                yield node.lineno, f"{module}.{alias.name}"


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path, rules: list[tuple[str, tuple[str, ...], str]]) -> list[str]:
    found = []
    for folder, forbidden, why in rules:
        for path in sorted((root / folder).rglob("*.py")):
            for line, name in imports(path, root):
                for prefix in forbidden:
                    if within(name, prefix) and not any(within(name, a) for a in ALLOWED):
                        found.append(f"{path.relative_to(root)}:{line} imports {name}: {why}")
    return sorted(set(found))


def test_the_code_follows_the_import_rules() -> None:
    assert violations(ROOT, RULES) == []


def test_a_violation_is_reported_with_file_line_and_rule(tmp_path: Path) -> None:
    relay = tmp_path / "proxy" / "relay"
    relay.mkdir(parents=True)
    (tmp_path / "proxy" / "__init__.py").write_text("")
    (relay / "__init__.py").write_text("")
    (relay / "pipe.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from ..faults.base import Fault\n")
    (relay / "state.py").write_text("def f():\n    from proxy import faults\n")
    protocol = tmp_path / "harness" / "protocol"
    protocol.mkdir(parents=True)
    (protocol / "io.py").write_text("import asyncio\nfrom websockets.asyncio.client import connect\n")
    server = tmp_path / "reference_server"
    server.mkdir()
    (server / "x.py").write_text("import proxy.cli\nfrom harness import probe\nfrom harness.protocol import now_us\n")
    found = violations(tmp_path, RULES)
    assert any(v.startswith("proxy/relay/pipe.py:3 imports proxy.faults.base") for v in found), found
    assert any(v.startswith("proxy/relay/state.py:2 imports proxy.faults") for v in found), found
    assert any(v.startswith("harness/protocol/io.py:1 imports asyncio") for v in found), found
    assert any(v.startswith("harness/protocol/io.py:2 imports websockets.asyncio.client") for v in found), found
    assert any(v.startswith("reference_server/x.py:1 imports proxy.cli") for v in found), found
    assert any(v.startswith("reference_server/x.py:2 imports harness.probe") for v in found), found
    assert not any("imports harness.protocol" in v for v in found), found


def test_importing_the_protocol_core_loads_no_event_loop() -> None:
    code = ("import sys, harness.protocol, harness.protocol.noise, harness.protocol.noise_flow; "
            "print(sorted({'asyncio', 'websockets.asyncio'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
