"""Which wire revisions the server speaks, and how a connection picks one.

`--profiles legacy,noise` (default: both). A connection's first message says
which revision the client speaks: a text `client/init` is the `noise` revision,
anything else the `legacy` one (whose first message must be `client/hello`).
Who opened the socket does not matter: in `noise` the client still sends
`client/init` first and the server is the Noise initiator (connection.md).

Refusals:
- a `client/init` on a legacy-only server: closed with 1002 and a reason that
  names the profiles served (legacy has no message for it);
- anything else on a noise-only server goes to the noise codec, which answers
  as the spec's init failure does: `server/error {"reason": "malformed"}`, then
  a close (aiosendspin 10.2.1's server does the same to a legacy hello).

Identity: one X25519 static key for the whole cluster, so every worker presents
the same `server_id`. The coordinator (or the single process) makes it or loads
it (`--identity FILE`: created, mode 0600, if absent) and hands the private key
to its workers over their IPC socket, never on a command line.

PSKs: by default every session is keyed with the Sentinel PSK (unpaired access).
`--psks FILE` gives PSKs to reference for given clients instead, e.g. a long-term PSK a
test client is pre-paired with (Sendspin/conformance's aiosendspin adapters derive one
from the ids they are given); the file is JSON, keys base64url as in the spec, the same
`psks` list as the proxy's `--noise-keys` file: `{"psks": [{"key": "<32 bytes>",
"category": "lt", "client_id": "<its key>"}]}` (entries without `client_id` are ignored:
the server references a PSK per client; harness/protocol/noise_keys.py reads it). A
session keyed with such a PSK is a paired one: its playback needs no unpaired access.
Every worker reads the file itself (a path on its command line).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.protocol import LegacyProfile, get_profile
from harness.protocol.noise import Identity, NoiseProfile
from harness.protocol.noise_crypto import DHLEN, Psk, b64url, b64url_decode
from harness.protocol.noise_keys import KeysFile

PROFILE_NAMES = ("legacy", "noise")
NOISE_FIRST_TYPE = "client/init"


def parse_profiles(text: str) -> tuple[str, ...]:
    """`legacy,noise` -> ("legacy", "noise"); ValueError naming what was wrong."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in PROFILE_NAMES]
    if unknown or not names:
        raise ValueError(f"--profiles takes a comma-separated list of {', '.join(PROFILE_NAMES)}, got {text!r}")
    return names


def load_identity(path: Path | None) -> Identity:
    """The server's static key: read from `path` (base64url private key, one line),
    created there if missing; a fresh one when no path is given."""
    if path is None:
        return Identity.generate()
    if not path.exists():
        identity = Identity.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(b64url(identity.private) + "\n")
        return identity
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        return Identity(b64url_decode(text, DHLEN))
    except ValueError as exc:
        raise ValueError(f"--identity {path}: not a base64url X25519 private key ({exc})") from None


def load_psks(path: Path | None) -> dict[str, Psk]:
    """client_id -> the PSK to reference for it, from `--psks FILE` (module docstring);
    ValueError naming the file and what is wrong."""
    return {} if path is None else KeysFile.load(path, f"--psks {path}").psk_for_client


def first_message_type(data: str | bytes) -> str | None:
    """The `type` of a text message that is a JSON object; None otherwise."""
    if not isinstance(data, str):
        return None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None


@dataclass
class ServedProfiles:
    """The revisions this process serves, with the noise identity (None without noise)."""

    names: tuple[str, ...] = PROFILE_NAMES
    identity: Identity | None = None
    psks: Mapping[str, Psk] = field(default_factory=dict)  # client_id -> PSK to reference (--psks)
    legacy: LegacyProfile = field(init=False)
    noise: NoiseProfile | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.legacy = get_profile("legacy")  # type: ignore[assignment]
        if "noise" in self.names:
            self.identity = self.identity or Identity.generate()
            self.noise = NoiseProfile(identity=self.identity, server_psks=self.psks)

    @property
    def server_id(self) -> str | None:
        """The noise `server_id` (base64url public key); None when noise is not served."""
        return self.identity.peer_id if self.noise is not None and self.identity is not None else None

    @staticmethod
    def spoken(first: str | bytes) -> str:
        """The profile a client whose first message is `first` speaks."""
        return "noise" if first_message_type(first) == NOISE_FIRST_TYPE else "legacy"
