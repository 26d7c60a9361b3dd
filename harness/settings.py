"""Correctness bounds the scenarios judge by, all in one place.

These are generous margins for "correct", not performance targets (speed is
measured by the benchmarks in bench/). Override any of them with
``pytest --bound NAME=VALUE``; values are in the unit the name says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Bounds:
    # I2: server_received - client_transmitted for every client/time (same clock).
    read_latency_us: int = 200_000
    # I1: a client/time sent this long before the end may still be unanswered.
    time_reply_grace_us: int = 1_500_000
    # I4: an unaffected player's audio must arrive at least this long before it is due.
    min_lead_us: int = 200_000
    # I4: an unaffected session's read-latency p99 may grow at most this much over its own baseline.
    isolation_latency_us: int = 100_000
    # I6: bytes the server may hold for one slow session (write buffer + queues).
    slow_session_held_bytes: int = 2 * 1024 * 1024
    # Policy closes (stalled payload, slow reader) must happen within their timeout plus this
    # (for a slow reader this includes the time its backlog takes to fill the socket buffers).
    policy_close_slack_us: int = 4_000_000
    # I3: share of the expected audio chunks a healthy player must receive (guards empty passes).
    min_audio_fraction: float = 0.8
    # I5: a worker's death (SIGKILL) must be noticed by the coordinator within this.
    crash_detect_us: int = 100_000
    # I5: a hung worker (SIGSTOP) must be declared dead within its heartbeat timeout plus this.
    hang_detect_slack_us: int = 500_000
    # I5: a client whose worker died streams again (first audio chunk) within this.
    recovery_us: int = 2_000_000

    # --- the client gate (harness/gate/client_cases/) ---
    # 1.2: the initial client/state follows server/hello within this.
    client_state_us: int = 2_000_000
    # 2.1: the first client/time follows server/hello within this.
    client_time_start_us: int = 2_000_000
    # 2.x: the longest a client may go without sending client/time (the spec leaves the
    # cadence to the client; this is "it keeps syncing", not a rate).
    client_time_gap_us: int = 5_000_000
    # 3.1: bytes a client may leave unread in its socket: above 1 s of PCM 48 kHz stereo
    # (192 KB), so a client that reads in batches, or was not scheduled for a while on a
    # busy machine, is not blamed; one that reads slower than real time passes it in seconds.
    client_unread_bytes: int = 256 * 1024
    # 5.x, 9.x: how long a client's socket may hold unread bytes without once being emptied
    # after a fault: a reader empties it within a chunk's 25 ms; 3 s leaves a client that was
    # not scheduled for a while on a busy machine unblamed, and catches one that stopped
    # reading whatever its receive buffer holds (the bytes alone depend on how far the
    # kernel had grown that buffer before).
    client_undrained_us: int = 3_000_000
    # 3.1: bytes the server may hold for a client that reads at the audio rate (≈1 s of PCM
    # 48 kHz stereo is 192 KB; the server's lead is below that).
    client_held_bytes: int = 512 * 1024
    # 3.4, 4.1: a player answers a server/command volume or mute with a client/state carrying the
    # new value within this (the spec: "State updates must be sent whenever any state changes").
    client_command_reply_us: int = 2_000_000
    # 4.4: a ping that came between two fragments of a message is answered (a pong) within this
    # (RFC 6455 §5.5.2: "as soon as is practical").
    client_pong_us: int = 2_000_000
    # 8.x: after its connection is lost, a client streams again (a new session gets audio) within this.
    client_recovery_us: int = 10_000_000
    # 8.x: connection attempts a client may make during a 15 s outage (a backoff from 1 s
    # makes about 5; a client retrying every 100 ms makes 150).
    client_attempts_per_outage: int = 10
    # 9.5: how long a client may take to read (or refuse) a 16 MiB message before what it leaves
    # unread is judged again (loopback carries it in well under a second; parsing takes longer).
    client_large_message_us: int = 3_000_000
    # 6.x, 8.3, 8.4: a dead session (a message stalled for good, a blackholed path, a hung
    # server, a server that answers pings and sends nothing else) must be noticed, and the
    # connection given up, within this. What a client needs for it: a few missed
    # server/time replies (3 at aiosendspin's 3 s cadence) or missed pongs of a keepalive
    # of a few seconds. Meanwhile its player plays nothing; a 30 s heartbeat (aiohttp's
    # ping at 30 s, closed 15 s later) is too slow for a player.
    client_dead_session_us: int = 10_000_000
    # 10.x (noise): after a malformed fragment sequence, a tampered ciphertext or cleartext after
    # the switch to transport mode, the client closes its connection within this ("MUST close":
    # nothing to wait for; a generous margin for a busy machine).
    client_noise_close_us: int = 2_000_000
    # 10.x (noise): a handshake the server stalls: the client gives that connection up within
    # this (connection.md: "SHOULD apply a timeout (e.g., 30 seconds)"; 30 s plus a margin).
    client_handshake_wait_us: int = 35_000_000
    # 10.x (noise): connection attempts in the 10 s after a failed handshake (every handshake
    # failing the same way): a backoff from 100 ms doubling to 3.2 s makes 7, a retry every
    # second 10; a client retrying every 100 ms makes 100.
    client_refused_attempts: int = 10
    # 10.11 (noise): the client answers the server's re-handshake message 1 with message 2
    # within this (nothing to wait for: one DH and a write; a margin for a busy machine).
    client_rehandshake_us: int = 2_000_000

    def with_overrides(self, pairs: list[str]) -> Bounds:
        fields = {f.name: f.type for f in dataclasses.fields(self)}
        changes: dict[str, int | float] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or name not in fields:
                raise ValueError(f"--bound {pair!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
            try:
                changes[name] = float(value) if fields[name] == "float" else int(value)
            except ValueError:
                raise ValueError(f"--bound {pair!r}: {value!r} is not a {fields[name]}") from None
        return dataclasses.replace(self, **changes)


DEFAULT_BOUNDS = Bounds()


# Processes the harness owns as instruments, not as the implementation under test: a
# violation that overlaps a stall of one of their event loops (`loop_lag`) is
# INCONCLUSIVE, not FAIL (checkers.judge). A name covers the proc of that name and its
# numbered siblings ("proxy" covers "proxy-2"). Today the reference server (`server`,
# `worker-N`, `coordinator`) is under test, so its own stall stays a FAIL; a gate that
# tests a foreign client against our server adds "server", "worker" and "coordinator".
INSTRUMENTS = frozenset({"harness", "proxy"})
