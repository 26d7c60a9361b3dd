"""Send stalls of a socket whose reads we hold (harness/protocol/tcpstall.py): the meter
on TCP_INFO samples, and TCP_INFO read from real loopback sockets."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from harness.protocol import tcpstall
from harness.protocol.tcpstall import SendStall, SendStallMeter, TcpInfo, tcp_info

OPEN = 65_536  # the peer's window: it reads


def feed(meter: SendStallMeter, *samples: tuple[int, TcpInfo]) -> list[SendStall]:
    return [s for t, info in samples if (s := meter.sample(t, info)) is not None]


def test_acks_that_keep_coming_are_no_stall() -> None:
    meter = SendStallMeter()
    assert feed(meter, *[(t, TcpInfo(unacked=3, last_ack_recv_us=2_000, snd_wnd=OPEN))
                         for t in range(0, 2_000_000, 20_000)]) == []


def test_unacknowledged_data_without_an_ack_is_a_stall_from_the_last_ack_until_the_next() -> None:
    meter = SendStallMeter()
    stalls = feed(meter,
                  (1_000_000, TcpInfo(unacked=1, last_ack_recv_us=40_000, snd_wnd=OPEN)),
                  (1_100_000, TcpInfo(unacked=2, last_ack_recv_us=140_000, snd_wnd=OPEN)),  # since 0.96 s
                  (1_500_000, TcpInfo(unacked=4, last_ack_recv_us=540_000, snd_wnd=OPEN)),
                  (1_560_000, TcpInfo(unacked=0, last_ack_recv_us=1_000, snd_wnd=OPEN)))
    assert stalls == [SendStall(t_us=1_560_000, lag_us=600_000, interval_us=meter.interval_us)]


def test_a_peer_that_closed_its_window_stalls_on_its_own_account() -> None:
    """A peer that stops reading closes its window: its stall is the finding, never ours."""
    meter = SendStallMeter()
    assert feed(meter, *[(t, TcpInfo(unacked=1, last_ack_recv_us=t, snd_wnd=0))
                         for t in range(0, 2_000_000, 20_000)]) == []
    assert meter.end(2_000_000) is None


def test_an_idle_socket_is_no_stall() -> None:
    meter = SendStallMeter()
    assert feed(meter, (5_000_000, TcpInfo(unacked=0, last_ack_recv_us=5_000_000, snd_wnd=OPEN))) == []


def test_a_stall_in_progress_when_the_watch_stops_is_reported_up_to_then() -> None:
    meter = SendStallMeter()
    assert feed(meter, (1_000_000, TcpInfo(unacked=1, last_ack_recv_us=300_000, snd_wnd=OPEN))) == []
    assert meter.end(1_200_000) == SendStall(1_200_000, 500_000, meter.interval_us)
    assert meter.end(1_300_000) is None


def test_tcp_info_of_a_real_connection_after_an_exchange() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname()[:2], timeout=5)
        peer, _ = server.accept()
        with client, peer:
            client.sendall(b"x" * 1000)
            assert peer.recv(1000)
            deadline = time.monotonic() + 5
            while (info := tcp_info(client)) is not None and info.unacked and time.monotonic() < deadline:
                time.sleep(0.01)  # the ACK is the peer kernel's, within microseconds on loopback
            assert info is not None and info.unacked == 0 and info.snd_wnd > 0
            assert info.last_ack_recv_us < 5_000_000


def test_tcp_info_of_a_socket_that_is_not_tcp_is_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert tcp_info(udp) is None


class _Loop:
    """call_later that runs nothing by itself: the test fires the timer."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Any]] = []

    def call_later(self, delay: float, callback: Any) -> Any:
        handle = _Handle(self, callback)
        self.pending.append((delay, handle))
        return handle

    def fire(self) -> None:
        (_, handle), = self.pending
        self.pending.clear()
        handle.callback()


class _Handle:
    def __init__(self, loop: _Loop, callback: Any) -> None:
        self.loop, self.callback = loop, callback

    def cancel(self) -> None:
        self.loop.pending = [p for p in self.loop.pending if p[1] is not self]


class _Log:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, event: str, session: str | None = None, t_us: int | None = None, **fields: Any) -> None:
        self.records.append({"event": event, "session": session, "t_us": t_us, **fields})


def test_the_watch_outlasts_its_stop_while_a_stall_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hold ends first; the stall ends when the peer's next ACK lands, a poll or more later."""
    samples = iter([TcpInfo(1, 300_000, OPEN), TcpInfo(1, 320_000, OPEN), TcpInfo(0, 1_000, OPEN)])
    monkeypatch.setattr(tcpstall, "tcp_info", lambda sock: next(samples))
    loop, log = _Loop(), _Log()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        watch = tcpstall.SendStallWatch(loop, sock, log, "flow-1", "server")
        watch.start()
        loop.fire()  # stalled: said at once, as a hold may never end
        (begun,) = log.records
        assert begun["event"] == "tcp_stall_begin" and begun["port"] == sock.getsockname()[1]
        assert begun["t_us"] - begun["since_us"] >= 300_000
        watch.stop()  # the hold ends
        assert loop.pending
        loop.fire()  # still stalled: nothing new
        assert len(log.records) == 1
        loop.fire()  # the ACK came
        assert loop.pending == []
        _, record = log.records
        assert record["event"] == "tcp_stall" and record["port"] == sock.getsockname()[1]
        assert record["peer"] == "server" and record["lag_us"] >= 300_000


def test_a_watch_stopped_without_a_stall_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcpstall, "tcp_info", lambda sock: TcpInfo(0, 5_000, OPEN))
    loop, log = _Loop(), _Log()
    with socket.socket() as sock:
        watch = tcpstall.SendStallWatch(loop, sock, log, None, "server")
        watch.start()
        loop.fire()
        watch.stop()
        assert loop.pending == [] and log.records == []
