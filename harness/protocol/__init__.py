"""Sans-I/O Sendspin protocol core: messages, codecs, state machines, profiles.

No sockets and no asyncio here; the server, the probe client and the proxy
feed it data and ask it for data.
"""

from .binary import (
    ARTWORK_CHANNEL_0,
    HEADER_SIZE,
    PLAYER_AUDIO,
    VISUALIZER_DATA,
    BinaryMessage,
    artwork_type,
    binary_role,
    binary_slot,
    decode_binary,
    encode_binary,
    fragment,
)
from .clock import now_us
from .codec import decode_json, encode_json, peek_type
from .errors import ConnectionFatal, ProtocolError, UnknownMessageType
from .eventlog import EventLog
from .fields import UNSET, Unset
from .handshake import IMPLEMENTED_ROLES, ClientHandshake, ServerHandshake, activate_roles, role_family
from .looplag import LagMeter, LateTick, LoopLagMonitor
from .messages import *  # noqa: F403 - the message classes are the package's vocabulary
from .messages import ALL_MESSAGES, MESSAGE_TYPES, NOISE_MESSAGE_TYPES, NOISE_MESSAGES, Message
from .profile import (
    BinaryParts,
    HandshakeStep,
    LegacyProfile,
    LegacySession,
    Profile,
    SessionCodec,
    Side,
    WireData,
    get_profile,
)

__all__ = [
    "ALL_MESSAGES",
    "ARTWORK_CHANNEL_0",
    "HEADER_SIZE",
    "IMPLEMENTED_ROLES",
    "MESSAGE_TYPES",
    "NOISE_MESSAGES",
    "NOISE_MESSAGE_TYPES",
    "PLAYER_AUDIO",
    "UNSET",
    "VISUALIZER_DATA",
    "BinaryMessage",
    "BinaryParts",
    "ClientHandshake",
    "ConnectionFatal",
    "EventLog",
    "HandshakeStep",
    "LagMeter",
    "LateTick",
    "LegacyProfile",
    "LegacySession",
    "LoopLagMonitor",
    "Message",
    "Profile",
    "ProtocolError",
    "ServerHandshake",
    "SessionCodec",
    "Side",
    "UnknownMessageType",
    "Unset",
    "WireData",
    "activate_roles",
    "artwork_type",
    "binary_role",
    "binary_slot",
    "decode_binary",
    "decode_json",
    "encode_binary",
    "encode_json",
    "fragment",
    "get_profile",
    "now_us",
    "peek_type",
    "role_family",
]
