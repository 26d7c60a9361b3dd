"""Every event a harness process writes to its event log, declared once.

`EventLog.emit` refuses an event or a field that is not declared here, and
`harness.events.Events.select` refuses to look for one, so writers (server,
coordinator, proxy, probe) and readers (the checkers) cannot drift apart.
README's event-log table is `markdown_table()`; tests/test_event_schema.py
keeps the two equal and checks every writer's `emit` calls against this list.

Every record also has `t_us` (CLOCK_MONOTONIC µs), `proc`, `session` and `event`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

COMMON_FIELDS = frozenset({"t_us", "proc", "session", "event"})


class UndeclaredEvent(ValueError):
    """A writer or a reader used an event name or field the schema does not declare."""


@dataclass(frozen=True)
class EventType:
    name: str
    writers: tuple[str, ...]  # server (single process or worker), coordinator, proxy, probe, harness (pytest itself)
    doc: str
    fields: Mapping[str, str]  # field -> meaning; every field is optional unless the doc says otherwise

    @property
    def field_names(self) -> frozenset[str]:
        return frozenset(self.fields)


def _e(name: str, writers: str, doc: str, **fields: str) -> EventType:
    return EventType(name, tuple(writers.split()), doc, fields)


_MESSAGE = dict(index="the message's index on its pipe", json_type="JSON `type`, if JSON",
                binary_type="binary type byte, if binary", size="payload bytes")

EVENTS: dict[str, EventType] = {e.name: e for e in [
    # --- every process ------------------------------------------------------------------
    _e("ready", "server coordinator proxy",
       "listening; the same data as the readiness file",
       pid="process id", host="bound host", port="bound port", url="WebSocket URL", http="HTTP base URL",
       workers="coordinator: the workers' ports and URLs", listen="proxy: listening URL",
       control="proxy: control API URL; server, coordinator: the control endpoint (scripted actions)",
       upstreams="proxy: upstream URLs", startup_s="proxy: seconds to start",
       server_dials="proxy: the server dials the proxy, the proxy the client (`--server-dials`)",
       noise="proxy: what it does with noise sessions, `opaque` or `terminate` (`--noise`)"),
    _e("loop_lag", "server coordinator proxy harness",
       "the process's own event loop ran a periodic tick late (looplag.py); `t_us` = when it ran, so the loop "
       "was blocked within [t_us − lag_us − interval_us, t_us]",
       lag_us="how late the tick ran (µs)", interval_us="the tick interval (µs)",
       runqueue_us="of that span, how long the loop's thread was runnable but waiting for a CPU (µs; the "
                   "machine's load, not the process's own work; absent where /proc does not say)"),
    _e("tcp_stall", "proxy probe",
       "nothing the process sent on a socket whose reads it held was acknowledged for a while, the peer's "
       "window open (tcpstall.py: the peer's ACKs fell beyond its full receive window); `t_us` = when it was "
       "seen to end, so sending was blocked within [t_us − lag_us − interval_us, t_us]",
       peer="the socket's peer (`client` or `server`)", port="the socket's own port (the peer's view of it)",
       lag_us="how long (µs)",
       interval_us="the poll interval (µs)"),
    _e("tcp_stall_begin", "proxy probe",
       "a `tcp_stall` was seen to begin (written at once: a hold never released keeps it going past every "
       "check of the run); without its `tcp_stall` it was still going on when the log was read",
       peer="the socket's peer (`client` or `server`)", port="the socket's own port (the peer's view of it)",
       since_us="the peer's last accepted ACK: the stall's start (µs)"),
    _e("log_slow_write", "server coordinator proxy probe harness",
       "writing a record to this event log took over 10 ms (the kernel's buffer for the disk was full, or the "
       "process was not scheduled meanwhile); written after it",
       write_us="how long the write took (µs)", bytes="the record's bytes"),
    _e("log_gap", "server coordinator proxy probe harness",
       "records before this one could not be written (eventlog.py); written first once writing works again",
       lost="records lost", error="why (the OS error)"),
    _e("shutdown", "server coordinator", "shutting down",
       sessions="server: live sessions", live_workers="coordinator: live workers"),
    _e("accept", "server proxy", "a TCP connection accepted (server: or dialled, then `dialled`)",
       remote="server: peer address", port="server: the peer's port (through the proxy: the proxy's socket)",
       client="proxy: peer host:port", conn_seq="proxy: connection number",
       dialled="server: true when the server dialled the client (server-initiated)",
       profile="server: the wire profile the client speaks, `legacy` or `noise`, from its first message "
               "(written once that message is read, stamped with the accept time; None: no message came)"),
    _e("close", "server proxy probe", "a connection ended",
       code="close code received (None: no close frame)", reason="close reason", sent_code="server: code it sent",
       audio_sent="server: chunks sent", audio_skipped="server: chunks skipped as stale",
       error="probe: the error that ended it", audio_samples="probe: samples received", gaps="probe: missing samples",
       duplicates="probe: duplicated samples", reordered="probe: out-of-order samples",
       client="proxy: client side {ended, sent, close_code, close_reason, error}", server="proxy: server side, same",
       upstream="proxy: client→server pipe stats", downstream="proxy: server→client pipe stats",
       seconds="proxy: connection lifetime",
       profile="proxy: the connection's profile, as `identified` said (None: the client sent no data message)"),
    _e("recv", "server probe",
       "a whole message read (`t_us` = when its last frame was read)",
       type="message type (`binary` for binary)", bytes="message bytes", fragments="WebSocket frames",
       client_id="client/hello: its client_id", roles="client/hello: its roles",
       supports="client/hello: the role support objects it sent (`player@v1_support`, …)",
       formats="client/hello: the player's supported_formats as `codec/rate/channels/bits`, in its order",
       commands="client/hello: the player's supported_commands",
       state="client/state: its `state`", player_state="client/state: its player `state` (older clients)",
       volume="client/state: the player's volume", muted="client/state: the player's muted",
       client_transmitted="client/time, server/time: the client's clock when sent",
       server_received="server/time: server clock at receipt", server_transmitted="server/time: server clock at reply",
       rtt_us="probe: round trip of a server/time", server_id="server/hello: its server_id",
       active_roles="server/hello, server/activate (noise): roles activated",
       activities="server/activate (noise): its activities", player="stream/start: the player format",
       rule="_harness/error: the rule broken", message_type="_harness/error: the message refused",
       binary_type="binary: the type byte"),
    _e("reject", "server probe", "a message refused, with the rule it broke",
       type="message type (`?` unknown)", field="offending field", rule="the rule, in words",
       action="`close` when the connection is closed for it (probe: silently, noise)", code="server: the close code",
       bytes="size of the refused message", fragments="its WebSocket frames"),
    # --- reference server ---------------------------------------------------------------
    _e("dial", "server", "the server dials a listening client (server-initiated; dialer.py)",
       url="the client's URL", dialer="the dialer's number", attempt="attempt number",
       reason="the connection_reason its server/hello will carry (playback first, discovery after a loss)"),
    _e("dial_failed", "server", "a dial failed (refused, timed out, upgrade refused)",
       url="the client's URL", dialer="the dialer's number", attempt="attempt number", error="why",
       retry_s="seconds until the next attempt (None: no redial)"),
    _e("dial_end", "server", "a dialer stops dialling", url="the client's URL", dialer="the dialer's number",
       why="why (client/goodbye reason, stopped, ...)"),
    _e("close_begin", "server", "the server starts a close", code="close code", reason="close reason"),
    _e("goodbye", "server", "client/goodbye received", reason="its reason"),
    _e("outdated_server", "server", "the client asked for role versions newer than ours", roles="those roles"),
    _e("command", "server", "a controller command applied", command="the command", group="group id"),
    _e("upload", "server", "a `_harness/upload` accepted", upload_id="its id", bytes="payload bytes",
       sha256="payload hash"),
    _e("artwork_queued", "server", "an artwork image queued for a session", channel="artwork channel",
       bytes="image bytes", sha256="image hash"),
    _e("send_begin", "server", "a non-audio message starts going out", type="message type",
       bytes="message bytes", fragments="WebSocket frames it is cut into",
       pings="a scripted split (action): a ping went between each two of its frames"),
    _e("send_end", "server", "that message fully written", type="message type", bytes="message bytes"),
    _e("audio_skip", "server", "audio chunks skipped because their time passed", chunks="chunks skipped now",
       total="chunks skipped in the session"),
    _e("session_stats", "server", "what one session holds, every `stats_interval_s`",
       write_buffer="bytes in the transport's buffer", control_bytes="queued control bytes",
       artwork_pending="artwork bytes waiting", unsent="bytes of a message not yet written",
       held="all bytes held for the session", audio_sent="chunks sent", audio_skipped="chunks skipped",
       in_flight="tests/bad_servers: bytes inside a blocking send"),
    _e("action", "server coordinator",
       "a scripted action from the control endpoint (POST /actions/NAME): applied to a session (`session` set), "
       "or refused; the coordinator logs each action it forwarded to the workers",
       action="its name", params="its parameters, checked, with defaults", client_id="the session's client",
       result="what was done (e.g. the format chosen)", refused="why this session (or, no session set: any) "
       "could not take it", workers="coordinator: the workers it went to"),
    _e("timeline_start", "server coordinator", "audio generation starts or resumes",
       origin_us="timestamp of frame `origin_frame`", origin_frame="first frame", rate="sample rate",
       frames_per_chunk="frames in a chunk", source="source kind"),
    _e("timeline_stop", "server coordinator", "generation pauses (no playing listener)",
       next_seq="next chunk number"),
    # --- coordinator and workers --------------------------------------------------------
    _e("worker_start", "coordinator server", "a worker started (the coordinator's view, or the worker's own)",
       worker="worker index", pid="its pid", port="its port", restarts="restarts so far",
       t_started_us="worker: when its loop began"),
    _e("worker_exit", "coordinator", "a worker found dead or hung", worker="worker index", pid="its pid",
       how="how it was noticed (`pidfd`, `ipc eof`, `no heartbeat …`)", code="exit status"),
    _e("worker_stop", "coordinator", "a worker stopped at shutdown", worker="worker index", pid="its pid",
       code="exit status"),
    _e("respawn_failed", "coordinator", "a dead worker could not be restarted", worker="worker index",
       error="why"),
    _e("ipc_drop", "coordinator", "a chunk a worker's socket could not take, dropped for it", worker="worker index",
       seq="chunk number", total="drops so far for that worker"),
    _e("exit", "coordinator", "the coordinator exits on its own", code="exit code", reason="why"),
    _e("coordinator_gone", "server", "a worker saw its coordinator's socket close"),
    # --- fault proxy --------------------------------------------------------------------
    _e("stopped", "proxy", "the proxy stopped"),
    _e("refused", "proxy", "a connection refused at accept (a `down` fault)", why="which fault"),
    _e("upstream", "proxy", "the upstream chosen for a connection", upstream="upstream index (None: none alive)",
       url="its URL", path="request path", active="its live connections", why="why none was chosen"),
    _e("upstream_up", "proxy", "an upstream back in the pool", upstream="index", url="URL", why="what said so"),
    _e("upstream_down", "proxy", "an upstream out of the pool", upstream="index", url="URL", why="what said so"),
    _e("relay", "proxy", "the relay takes over a connection after its 101", path="request path",
       upstream="upstream index", extensions="Sec-WebSocket-Extensions of the 101 (None: no extension)",
       stripped="the client's extension offer, removed before forwarding (None: it made none, or "
                "--keep-extensions)"),
    _e("identified", "proxy",
       "the client's first data message told the connection's profile: a text `client/init` is `noise`, a text "
       "`client/hello` `legacy`, anything else `unknown` (plain, treated as legacy); faults that mean nothing in "
       "its mode leave it now (`fault_not_applied`), before they see that message",
       profile="legacy, noise or unknown", mode="what the proxy can read: `legacy` (plain messages), "
       "`noise-opaque` (ciphertext after the handshake; the proxy holds no keys) or `noise-terminated` (plaintext: "
       "`--noise terminate`)",
       json_type="the first message's JSON type (None: not JSON)", conn_seq="the connection's number",
       client_port="the client's TCP port"),
    _e("noise_terminate", "proxy",
       "a terminating proxy (`--noise terminate`) and one noise connection: `established` (both handshakes done; "
       "faults see plaintext from here), `refused` (the server answered `server/error`, passed to the client), "
       "`rehandshake` (the proxy answered the server's re-handshake), `failed` (the proxy closed both peers "
       "silently: a failed handshake, an authentication failure, cleartext after the switch)",
       stage="established, refused, rehandshake or failed", conn_seq="the connection's number",
       client_id="the client's client_id (its key)", side="the peer that failed or refused",
       reason="why, in words", suite="the Noise suite", upstream_client_id="the key the proxy used as the client "
       "towards the server", server_id="the server's key", proxy_server_id="the key the proxy used as the server "
       "towards the client"),
    _e("error", "proxy", "a relay failed unexpectedly", error="the exception"),
    _e("fault_added", "proxy", "a fault added", spec="its full spec"),
    _e("fault_removed", "proxy", "a fault removed or retired", fault="its name", type="its type",
       why="`api`, `reset`, `count`, `duration`, …", applied="times it acted"),
    _e("fault_not_applied", "proxy",
       "a fault cannot act on a connection at all (a message fault where an extension such as permessage-deflate "
       "was negotiated, or a fault that means nothing in the connection's mode, e.g. a drop on a noise session): "
       "logged when the two meet (or when the connection is `identified`), instead of a fault that is silently inert",
       fault="its name", type="its type", direction="its direction", conn_seq="the connection's number",
       client_port="the client's TCP port", upstream="upstream index", extensions="the negotiated extensions",
       profile="the connection's profile (None: not yet identified)",
       mode="the connection's mode: `legacy`, `noise-opaque` or `noise-terminated` (None: not yet identified)",
       why="why, in words"),
    _e("fault_undo", "proxy", "a fault undone (a stopped worker continued)", fault="its name", type="its type",
       action="what was done", pid="the process"),
    _e("fault", "proxy", "a fault acted once (fields by fault type)",
       fault="its name", type="its type", direction="`upstream` or `downstream`", params="its parameters",
       selector="its selector", **_MESSAGE,
       encrypted="true: the message was a noise session's ciphertext (no type to name; binary_type None)",
       variant="orphan_header: binary/fragment/announce", kept="bytes kept", opened_us="when the orphan opened",
       dropped="messages dropped", dropped_bytes="bytes dropped", closed_by="what ended an open fragment",
       next_index="the message that followed", mode="stalled_payload: frame/bytes", sent_bytes="bytes let through",
       stall_s="stall length (None: forever)", frames="slicer, inject: frames made", at="corrupt: offset",
       was="corrupt: byte before", now="corrupt: byte after", delay_ms="delay", reorder="delay: reordered",
       copies="duplicate: copies", rate_bps="rate", rcvbuf_bytes="slow_reader: SO_RCVBUF set",
       latency_ms="latency", jitter_ms="jitter", limit_bytes="limit_data: limit", sent="bytes sent",
       timeout_s="timeout: after", end="timeout: how it ends", side="reset_peer: side", after_s="after seconds",
       code="close: code", reason="close: reason", action="worker_crash/down: action", upstream="upstream index",
       url="upstream URL", pid="process signalled", flows="flows reset", error="why it could not act",
       client="down: refused peer", conn_seq="down: refused connection number"),
    _e("wire", "proxy", "a message crossed the proxy (`--wire-log`; before any fault acted on it)",
       direction="`upstream` (client→server) or `downstream`", kind="text, binary, close, ping or pong",
       type="JSON `type`, or the binary type byte", size="payload bytes on the wire",
       fragments="WebSocket frames, if more than one", compressed="permessage-deflate was on it",
       complete="False: a new message began before its last frame", code="close: its code",
       ts_us="binary: the timestamp in its header (server clock, µs)"),
    _e("client_queue", "harness",
       "the client under test's unread bytes changed (its socket's receive queue, sampled from /proc/net/tcp)",
       port="the client's local port", bytes="bytes received and not yet read by the client"),
    _e("client_socket_gone", "harness",
       "a connection of the client under test left ESTABLISHED (the kernel's view, /proc/net/tcp): the client "
       "gave it up, or its peer did; seen even where the proxy reads nothing (a blackhole)",
       port="the port its client_queue records carried"),
    # --- probe client -------------------------------------------------------------------
    _e("connect", "probe", "connected (after the 101)", url="URL", rcvbuf="its SO_RCVBUF"),
    _e("accepted", "probe", "a server dialled us (server-initiated), before the 101", peer="its host:port",
       rcvbuf="its SO_RCVBUF"),
    _e("redirect", "probe", "followed an HTTP redirect", url="asked", location="sent to"),
    _e("reconnected", "probe", "connected again after losing the connection", attempt="attempt number",
       url="URL", down_us="time without a connection"),
    _e("reconnect_failed", "probe", "a reconnect attempt failed", attempt="attempt number", error="why"),
    _e("dead_session", "probe", "no `server/time` reply for `dead_session_s` while it kept sending `client/time`: "
       "it dropped the connection (a stalled or blackholed path), to reconnect if it was told to",
       silent_us="time since the last server/time reply (or server/hello)"),
    _e("noise_handshake", "probe", "a Noise handshake (noise profile) completed: the keys in use from now on",
       suite="the suite", server_id="the server's public key (base64url)",
       client_id="the probe's own client_id, its public key (base64url): what the server logs for its client/hello",
       psk_category="the PSK used (`sn`: the Sentinel, unpaired access)",
       rehandshake="true for a server-initiated re-handshake", notes="oddities tolerated"),
    _e("send", "probe", "a JSON message sent", type="message type", client_transmitted="client/time: its clock"),
    _e("audio", "probe", "an audio chunk received and checked sample by sample",
       ts_us="its timestamp", lead_us="how long before it plays it arrived", bytes="payload bytes",
       fragments="WebSocket frames", send_ahead_us="noise: the header's send_ahead (the server's lead when it "
       "sent the chunk; 0 or 4294967295: none measured)", first="first sample index", frames="samples per channel",
       gap="samples missing before it", dup="samples repeated", reorder="samples out of order",
       corrupt="samples that are not the watermark"),
    _e("artwork", "probe", "an artwork image received", t_first_us="when its first frame arrived",
       channel="artwork channel", bytes="image bytes", sha256="image hash", fragments="WebSocket frames",
       fragment_max="largest frame", fragment_min="smallest frame", fragment_sizes="first 64 frame sizes"),
    _e("misbehave", "probe", "the probe misbehaved on purpose", kind="what it did", bytes="bytes sent",
       type="message type", upload_id="upload id"),
    _e("ping", "probe", "a ping sent", data="its payload"),
    _e("pong", "probe", "a pong received", data="its payload", mid_message="it came between a message's frames"),
    _e("read_rate", "probe", "its read rate changed", rate="bytes/s (0: stopped, None: full speed)"),
]}


def check_record(event: str, fields: Iterable[str]) -> None:
    """Raise UndeclaredEvent unless `event` is declared with all of `fields`."""
    spec = EVENTS.get(event)
    if spec is None:
        raise UndeclaredEvent(f"event {event!r} is not declared in harness/protocol/eventschema.py")
    extra = set(fields) - spec.field_names - COMMON_FIELDS
    if extra:
        raise UndeclaredEvent(f"event {event!r}: field(s) {sorted(extra)} not declared in "
                              f"harness/protocol/eventschema.py")


def markdown_table() -> str:
    lines = ["| event | written by | what | fields |", "|---|---|---|---|"]
    for e in EVENTS.values():
        fields = ", ".join(f"`{f}`" for f in e.fields) or "—"
        lines.append(f"| `{e.name}` | {', '.join(e.writers)} | {e.doc} | {fields} |")
    return "\n".join(lines)
