"""The `noise` profile: the current Sendspin revision (spec `connection.md`,
`messaging.md`), end-to-end encrypted with Noise `KKpsk2`.

The parts, each sans-I/O:

- `noise_crypto.py`: the Noise framework on `cryptography` (suites, CipherState,
  SymmetricState, the KKpsk2 HandshakeState); identities, PSKs, `psk_id`, the
  Sentinel PSK.
- `noise_session.py`: `NoiseSession`, one connection's codec: `client/init`,
  `server/init`, `server/error`, the handshake, transport mode, the re-handshake.
- `fragments.py`: Sendspin fragments (type 1, flags): splitting, and the single
  reassembly buffer with its cap.
- `noise_plaintext.py`: the plaintext's type byte, the 13-byte audio header,
  saturating `send_ahead`.
- `noise_flow.py`: who may send what after the handshake: `server/hello` →
  `client/hello` → `server/activate`.

The messages new to this revision are in `messages.py` (`NOISE_MESSAGES`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .fragments import DEFAULT_REASSEMBLY_CAP
from .noise_crypto import SENTINEL, SENTINEL_PSK, SENTINEL_PSK_ID, SUITES, Identity, Psk, Suite, psk_id
from .noise_plaintext import AudioChunk, RawBinary, encode_audio
from .noise_session import NoiseSession, Phase, check_client_init
from .profile import Side

__all__ = [
    "SENTINEL", "SENTINEL_PSK", "SENTINEL_PSK_ID", "SUITES", "AudioChunk", "Identity", "NoiseProfile",
    "NoiseSession", "Phase", "Psk", "RawBinary", "Suite", "check_client_init", "psk_id",
]


@dataclass
class NoiseProfile:
    """A process's side of the `noise` revision: its identity and PSKs. `session(side)`
    opens one connection's codec. `get_profile("noise")` gives one with a fresh random
    identity, the Sentinel PSK only and ChaChaPoly for clients."""

    identity: Identity = field(default_factory=Identity.generate)
    suite: Suite = "25519_ChaChaPoly_SHA256"  # what a client announces (a server takes the client's)
    server_psks: Mapping[str, Psk] = field(default_factory=dict)  # client_id -> PSK to reference
    client_psks: Sequence[Psk] = ()  # a client's candidates besides the Sentinel
    reassembly_cap: int = DEFAULT_REASSEMBLY_CAP
    name = "noise"

    def session(self, side: Side) -> NoiseSession:
        return NoiseSession(side, self.identity, suite=self.suite, server_psks=self.server_psks,
                            client_psks=self.client_psks, reassembly_cap=self.reassembly_cap)

    def prepare_audio(self, timestamp_us: int, pcm: bytes | memoryview) -> bytes:
        """The plaintext audio message, rendered once; each session stamps `send_ahead`
        and encrypts it (`NoiseSession.audio_frame`)."""
        return encode_audio(timestamp_us, 0, pcm)
