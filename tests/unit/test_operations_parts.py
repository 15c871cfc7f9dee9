"""The small parts behind reloads and systemd: the control channel's framing
and bounds, the config file watch, sd_notify, and the hosts a reload keeps."""
from __future__ import annotations

import os
import socket
import struct

import pytest

from mcrouter import reload, sdnotify
from mcrouter.config import ConfigError, HostAddr, MAX_CONFIG_BYTES, read_config_text
from mcrouter.control import MAX_FRAME, MAX_OUTBOX, Channel, ChannelClosed
from mcrouter.hostset import HostSet


# -- control channel -------------------------------------------------------

def test_channel_carries_messages_both_ways_in_order():
    master, worker = Channel.pair()
    try:
        for n in range(3):
            assert master.send({"config": "x" * 100_000, "path": "r.yaml", "generation": n})
        got: list[dict] = []
        for _ in range(100):
            master.flush()
            got += worker.receive()
            if len(got) == 3:
                break
        assert [m["generation"] for m in got] == [0, 1, 2]
        assert worker.send({"applied": 2}) and master.receive() == [{"applied": 2}]
    finally:
        master.close()
        worker.close()


def test_channel_refuses_what_it_cannot_bound():
    master, worker = Channel.pair()
    try:
        assert not master.send({"config": "x" * (MAX_FRAME + 1)})      # one frame too big
        while master.send({"config": "y" * (MAX_FRAME // 2)}):           # a peer that never reads
            assert len(master.outbox) <= MAX_OUTBOX
        assert len(master.outbox) <= MAX_OUTBOX
    finally:
        master.close()
        worker.close()


@pytest.mark.parametrize("data", [struct.pack(">I", MAX_FRAME + 1), struct.pack(">I", 2) + b"{!"])
def test_channel_rejects_garbage(data):
    a, b = socket.socketpair()
    ch = Channel(b)
    try:
        a.sendall(data)
        with pytest.raises(ChannelClosed):
            ch.receive()
    finally:
        a.close()
        ch.close()


def test_channel_reports_the_peer_gone():
    master, worker = Channel.pair()
    master.close()
    with pytest.raises(ChannelClosed):
        worker.receive()
    worker.close()


# -- config file ---------------------------------------------------------------

def test_a_config_file_too_large_is_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError) as e:
        read_config_text(str(path))
    assert str(e.value) == f"{path}: larger than 1 MiB; a router config is a few lines"


def test_a_config_file_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"orderedPool: [\xff]\n")
    with pytest.raises(ConfigError) as e:
        read_config_text(str(path))
    assert str(e.value).startswith(f"{path}: not UTF-8 text (invalid start byte at byte 14)")


def test_file_watch_waits_for_the_file_to_keep_still(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("a")
    w = reload.FileWatch(str(path), now=0.0)
    t = 0.0
    assert not w.due(t)
    path.write_text("bb")                       # a change...
    t += reload.POLL
    assert not w.due(t)                         # ...seen, settling
    path.write_text("ccc")                      # changed again: the settle restarts
    t += reload.POLL
    assert not w.due(t)
    fired = []
    for _ in range(8):
        t += reload.POLL
        fired.append(w.due(t))
    assert fired.count(True) == 1               # once per settled change
    assert fired.index(True) * reload.POLL + reload.POLL >= reload.SETTLE


def test_file_watch_sees_a_replacement_by_rename(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("same")
    w = reload.FileWatch(str(path), now=0.0)
    st = os.stat(path)
    other = tmp_path / "new.yaml"
    other.write_text("same")                    # same size, new inode
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    assert any(w.due(i * reload.POLL) for i in range(1, 10))


# -- sd_notify -----------------------------------------------------------------

def test_sd_notify_is_a_no_op_without_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready("x") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")      # not a unix socket: ignored
    assert sdnotify.stopping() is False


def test_sd_notify_to_a_socket_that_went_away_is_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.ready() is False


# -- the hosts a reload keeps ------------------------------------------------

class FakeHost:
    def __init__(self, addr: HostAddr) -> None:
        self.addr = addr
        self.started = self.closed = False
        self.conns: list = []

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True


class FakeClient:
    def __init__(self, answered: int, owed: int) -> None:
        self.answered, self.owed, self.closed = answered, owed, False

    def reply_mark(self) -> int:
        return self.answered + self.owed


A, B, C = HostAddr("a", 1), HostAddr("b", 1), HostAddr("c", 1)


def test_hosts_are_kept_added_retired_and_revived():
    hosts = HostSet(FakeHost)                               # type: ignore[arg-type]
    a, b = hosts.use([A, B], [])
    client = FakeClient(answered=5, owed=2)
    a2, c = hosts.use([A, C], [client])                     # b leaves, c comes
    assert a2 is a and c.started and not b.closed
    assert hosts.close_retired() == 0                       # the client is owed 2 replies
    client.answered = 7
    assert hosts.close_retired() == 1 and b.closed

    client.owed = 1
    hosts.use([A], [client])                                # c retires...
    (a3, c2) = hosts.use([A, C], [client])                  # ...and comes back, same object
    assert c2 is c and not c.closed and hosts.retiring[0].hosts == []
    assert sorted(h.addr.host for h in hosts.all()) == ["a", "c"]


def test_the_oldest_generation_held_moves_on_when_a_retirement_completes():
    """What a worker reports as ``holds``: the master frees a host's shared
    slot only once no worker holds a generation that names it."""
    hosts = HostSet(FakeHost)                               # type: ignore[arg-type]
    hosts.use([A, B], [], 1)
    assert hosts.oldest(1) == 1
    client = FakeClient(answered=0, owed=1)
    hosts.use([A], [client], 1)                             # generation 2: b retires
    hosts.use([C], [client], 2)                             # generation 3: a retires
    assert hosts.oldest(3) == 1
    client.answered = 1
    hosts.close_retired()
    assert hosts.oldest(3) == 3


def test_a_closed_client_owes_nothing():
    hosts = HostSet(FakeHost)                               # type: ignore[arg-type]
    (a,) = hosts.use([A], [])
    client = FakeClient(answered=0, owed=3)
    hosts.use([B], [client])
    assert hosts.close_retired() == 0
    client.closed = True
    assert hosts.close_retired() == 1 and a.closed
