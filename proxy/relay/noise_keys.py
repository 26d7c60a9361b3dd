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

The file is `harness/protocol/noise_keys.py`'s (the reference server reads it too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.protocol.noise_crypto import Identity, Psk
from harness.protocol.noise_keys import KeysFile, KeysFileError

__all__ = ["KeysFileError", "NoiseKeys"]


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
        return cls() if path is None else cls._of(KeysFile.load(path, f"--noise-keys {path}"))

    @classmethod
    def parse(cls, doc: Any, where: str = "noise keys") -> NoiseKeys:
        return cls._of(KeysFile.parse(doc, where))

    @classmethod
    def _of(cls, file: KeysFile) -> NoiseKeys:
        return cls({i.peer_id: i for i in file.identities}, file.psks, file.psk_for_client)
