"""The keys a Noise-terminating proxy holds (`sendspin-proxy --noise terminate`).

A terminating proxy completes one handshake with each peer (terminate.py): towards the
server it is the client, towards the client it is the server. Each handshake needs a
static key of its own and a PSK:

- Towards the server the proxy uses the client's own key when the keys file holds it
  (the server then sees the real client_id), else a key the proxy makes for that client
  (the same for as long as the proxy runs, so the server sees one client reconnect).
- Towards the client it uses the server's own key when the file holds it (a client that
  pinned the server's key accepts it), else one key of the proxy's own.
- PSKs: every PSK in the file is a candidate towards the server; a PSK with a `client_id`
  is the one referenced towards that client. Absent one, both sides use the Sentinel PSK,
  which is what unpaired access means.

The file is JSON; keys are base64url (without padding, as in the spec):

    {"identities": ["<X25519 private key>", ...],
     "psks": [{"key": "<32 bytes>", "category": "lt", "client_id": "...", "server_id": "..."}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.protocol.noise_crypto import DHLEN, PSK_CATEGORIES, Identity, Psk, b64url_decode


class KeysFileError(ValueError):
    """The keys file is not what the module docstring describes; the message names what."""


@dataclass
class NoiseKeys:
    identities: dict[str, Identity] = field(default_factory=dict)  # peer_id -> its private key
    psks: list[Psk] = field(default_factory=list)
    psk_for_client: dict[str, Psk] = field(default_factory=dict)
    own: Identity = field(default_factory=Identity.generate)  # the proxy's server identity
    _made: dict[str, Identity] = field(default_factory=dict)  # client_id -> the key used for it upstream

    def towards_server(self, client_id: str) -> Identity:
        """The static key the proxy uses as the client `client_id` towards the server."""
        known = self.identities.get(client_id)
        if known is not None:
            return known
        return self._made.setdefault(client_id, Identity.generate())

    def towards_client(self, server_id: str | None) -> Identity:
        """The static key the proxy uses as the server `server_id` towards the client."""
        return self.identities.get(server_id or "", self.own)

    @classmethod
    def load(cls, path: str | Path | None) -> NoiseKeys:
        """The keys of `path` (None: none, Sentinel PSK and the proxy's own keys only)."""
        if path is None:
            return cls()
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise KeysFileError(f"noise keys file {path}: {exc}") from None
        return cls.parse(doc, str(path))

    @classmethod
    def parse(cls, doc: Any, where: str = "noise keys") -> NoiseKeys:
        if not isinstance(doc, dict) or set(doc) - {"identities", "psks"}:
            raise KeysFileError(f"{where}: a JSON object with `identities` and/or `psks`, got "
                                f"{sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
        keys = cls()
        for i, text in enumerate(doc.get("identities", [])):
            try:
                identity = Identity(b64url_decode(text, DHLEN))
            except (TypeError, ValueError) as exc:
                raise KeysFileError(f"{where}: identities[{i}]: {exc}") from None
            keys.identities[identity.peer_id] = identity
        for i, entry in enumerate(doc.get("psks", [])):
            if not isinstance(entry, dict) or "key" not in entry or set(entry) - {"key", "category", "client_id",
                                                                                   "server_id"}:
                raise KeysFileError(f"{where}: psks[{i}]: an object with `key`, `category` and optionally "
                                    f"`client_id`, `server_id`, got {entry!r}")
            try:
                psk = Psk(b64url_decode(entry["key"], 32), entry.get("category", "lt"), entry.get("server_id"))
            except (TypeError, ValueError) as exc:
                raise KeysFileError(f"{where}: psks[{i}]: {exc} (categories: {list(PSK_CATEGORIES)})") from None
            keys.psks.append(psk)
            if entry.get("client_id"):
                keys.psk_for_client[entry["client_id"]] = psk
        return keys
