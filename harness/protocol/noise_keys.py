"""A keys file: static keys and PSKs for test peers, read by the reference server
(`--psks`) and by the proxy (`--noise-keys`). One format and one parser for both (they
never import each other); keys are base64url without padding, as in the spec:

    {"identities": ["<X25519 private key>", ...],
     "psks": [{"key": "<32 bytes>", "category": "lt", "client_id": "...", "server_id": "..."}]}

A PSK's `client_id` names the client it is referenced for; `server_id` binds a long-term
PSK to a server, as a client's pairing record does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .noise_crypto import DHLEN, PSK_CATEGORIES, Identity, Psk, b64url_decode

PSK_FIELDS = frozenset({"key", "category", "client_id", "server_id"})


class KeysFileError(ValueError):
    """The keys file is not what the module docstring describes; the message names what."""


@dataclass
class KeysFile:
    identities: list[Identity] = field(default_factory=list)
    psks: list[Psk] = field(default_factory=list)
    psk_for_client: dict[str, Psk] = field(default_factory=dict)  # client_id -> the PSK to reference for it

    @classmethod
    def load(cls, path: Path | str, where: str) -> KeysFile:
        """`where` names the file in errors (e.g. `--psks FILE`)."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise KeysFileError(f"{where}: not readable JSON ({exc})") from None
        return cls.parse(doc, where)

    @classmethod
    def parse(cls, doc: Any, where: str = "noise keys") -> KeysFile:
        if not isinstance(doc, dict) or not doc.keys() <= {"identities", "psks"}:
            raise KeysFileError(f'{where}: needs an object with a "psks" list and/or an "identities" list: a JSON '
                                f"object, got {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
        keys = cls()
        for i, text in enumerate(doc.get("identities", [])):
            try:
                keys.identities.append(Identity(b64url_decode(text, DHLEN)))
            except (TypeError, ValueError) as exc:
                raise KeysFileError(f"{where}: identities[{i}]: {exc}") from None
        for i, entry in enumerate(doc.get("psks", [])):
            if not isinstance(entry, dict) or "key" not in entry or not entry.keys() <= PSK_FIELDS:
                raise KeysFileError(f"{where}: psks[{i}]: an object with `key`, `category` and optionally "
                                    f"`client_id`, `server_id`, got {entry!r}")
            if entry.get("category") not in PSK_CATEGORIES:
                raise KeysFileError(f'{where}: psks[{i}]: "category" must be one of {list(PSK_CATEGORIES)}, '
                                    f"got {entry.get('category')!r}")
            client_id = entry.get("client_id")
            try:
                if client_id is not None:
                    b64url_decode(client_id, DHLEN)
                psk = Psk(b64url_decode(entry["key"], 32), entry["category"], entry.get("server_id"))
            except (TypeError, ValueError) as exc:
                raise KeysFileError(f"{where}: psks[{i}]: {exc} (key and client_id are base64url of 32 "
                                    "bytes)") from None
            keys.psks.append(psk)
            if client_id is not None:
                keys.psk_for_client[client_id] = psk
        return keys
