"""Shared by the `noise` profile's tests: run the handshake between our two sans-I/O
sides, message by message, optionally through a tamper function."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable

import pytest

from harness.protocol import HandshakeStep
from harness.protocol import messages as m
from harness.protocol.noise import Identity, NoiseSession

Wire = str | bytes
Tamper = Callable[[Wire], Wire]


def _same(data: Wire) -> Wire:
    return data


def handshake(server: NoiseSession, client: NoiseSession, *, to_server: Tamper = _same,
              to_client: Tamper = _same) -> tuple[list[HandshakeStep], list[HandshakeStep]]:
    """Run the handshake, message by message, through the tamper functions. Returns
    every step of each side; stops at the first close."""
    server_steps: list[HandshakeStep] = []
    client_steps = [client.handshake(None)]
    pending_to_server = list(client_steps[0].send)
    pending_to_client: list[Wire] = []
    for _ in range(10):
        if pending_to_server:
            step = server.handshake(to_server(pending_to_server.pop(0)))
            server_steps.append(step)
            pending_to_client += step.send
            if step.close:
                break
        elif pending_to_client:
            step = client.handshake(to_client(pending_to_client.pop(0)))
            client_steps.append(step)
            pending_to_server += step.send
            if step.close:
                break
        else:
            break
    return server_steps, client_steps


def pair(suite: str = "25519_ChaChaPoly_SHA256", **kw: object) -> tuple[NoiseSession, NoiseSession]:
    server = NoiseSession("server", Identity.generate(), **kw.get("server_kw", {}))  # type: ignore[arg-type]
    client = NoiseSession("client", Identity.generate(), suite=suite, **kw.get("client_kw", {}))  # type: ignore[arg-type]
    server_steps, client_steps = handshake(server, client)
    assert server_steps[-1].done and client_steps[-1].done, (server_steps, client_steps)
    return server, client


def deliver(sender: NoiseSession, receiver: NoiseSession, message: m.Message) -> m.Message | None:
    result = None
    for wire in sender.encode_messages(message):
        result = receiver.decode(wire)
    return result  # type: ignore[return-value]


AIOSENDSPIN10_ENV = "SENDSPIN_AIOSENDSPIN10_PYTHON"


def venv_python(env: str, dist: str, version: str, what: str) -> tuple[str | None, str]:
    """The interpreter `env` names if it has `dist`==`version`, else None and why not
    (`what`: what the interpreter is for, for the message when `env` is unset)."""
    python = os.environ.get(env)
    if not python:
        return None, f"{env} is not set: it names {what}"
    try:
        found = subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                               capture_output=True, text=True, timeout=60).stdout.strip()
    except OSError as exc:
        return None, f"{env}={python} cannot run: {exc}"
    if found != version:
        return None, f"{env}={python} has {dist} {found or 'missing'}, not {version}"
    return python, ""


@functools.cache
def _aiosendspin10() -> tuple[str | None, str]:
    return venv_python(AIOSENDSPIN10_ENV, "aiosendspin", "10.2.1",
                       "a Python with aiosendspin[server]==10.2.1 (the project's venv pins 6.1.1); see "
                       "tests/test_protocol_noise_interop.py")


def aiosendspin10_python() -> str:
    """The interpreter with aiosendspin 10.2.1 (a real Noise peer, in a venv of its own: the
    project's pins 6.1.1), or skip the test saying why."""
    python, why = _aiosendspin10()
    if python is None:
        pytest.skip(why)
    return python
