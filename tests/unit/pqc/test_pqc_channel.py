import os

import pytest

from x0tta6bl4.pqc import DecryptionError, InvalidKey, RekeyRequired, ReplayError, ReplayWindow, SecureChannel
from x0tta6bl4.pqc.channel import HEADER_SIZE


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def pair(**kw):
    a, b = os.urandom(32), os.urandom(32)
    return SecureChannel(b"link-1", a, b, **kw), SecureChannel(b"link-1", b, a, **kw)


def test_round_trip_both_directions_with_aad():
    x, y = pair()
    assert y.open(x.seal(b"hello", b"hdr"), b"hdr") == b"hello"
    assert x.open(y.seal(b"back")) == b"back"
    with pytest.raises(DecryptionError, match="authentication"):
        y.open(x.seal(b"m", b"hdr"), b"other")


def test_tamper_truncation_and_channel_binding():
    x, y = pair()
    f = x.seal(b"payload")
    for bad in (f[:-1], f[: HEADER_SIZE + 15], f[:HEADER_SIZE] + bytes([f[HEADER_SIZE] ^ 1]) + f[HEADER_SIZE + 1 :]):
        with pytest.raises(DecryptionError):
            y.open(bad)
    # header (seq) is authenticated
    forged = f[:5] + (7).to_bytes(8, "big") + f[HEADER_SIZE:]
    with pytest.raises(DecryptionError):
        y.open(forged)
    # same keys, other channel id -> rejected
    z = SecureChannel(b"link-2", y._send.secret, y._recv[0].secret)
    with pytest.raises(DecryptionError):
        z.open(f)
    assert y.open(f) == b"payload"


def test_replay_and_reorder_window():
    x, y = pair(replay_window=8)
    frames = [x.seal(b"%d" % i) for i in range(20)]
    assert y.open(frames[5]) == b"5"
    assert y.open(frames[2]) == b"2"  # reordered, within window
    with pytest.raises(ReplayError, match="already"):
        y.open(frames[5])
    assert y.open(frames[12]) == b"12"
    with pytest.raises(ReplayError, match="older"):
        y.open(frames[4])  # 12 - 4 = 8 >= window
    assert y.open(frames[6]) == b"6"  # 12 - 6 = 6 < 8
    with pytest.raises(ReplayError):
        y.open(frames[6])
    # failed authentication does not poison the window
    bad = frames[13][:-1] + bytes([frames[13][-1] ^ 1])
    with pytest.raises(DecryptionError):
        y.open(bad)
    assert y.open(frames[13]) == b"13"


def test_replay_window_unit():
    w = ReplayWindow(4)
    for s in (0, 3, 1):
        w.check(s)
        w.commit(s)
    with pytest.raises(ReplayError):
        w.check(3)
    w.check(2)
    w.commit(100)
    with pytest.raises(ReplayError):
        w.check(96)
    w.check(97)


def test_nonces_unique_across_messages_and_epochs():
    x, _ = pair(max_messages=50)
    seen = set()
    for _ in range(400):  # spans 8 epochs
        f = x.seal(b"")
        epoch = int.from_bytes(f[1:5], "big")
        seq = int.from_bytes(f[5:13], "big")
        ep = x._send if x._send.number == epoch else None
        assert ep is not None
        seen.add((ep.aead, ep.nonce(seq)))
        assert seq < 50
    assert len(seen) == 400
    assert x.send_epoch == 7
    # same seq in different epochs -> different nonce (distinct IVs) and key
    from x0tta6bl4.pqc.channel import _Epoch

    e0, e1 = _Epoch(0, b"\1" * 32, 4), _Epoch(1, _Epoch(0, b"\1" * 32, 4).next_secret(), 4)
    assert e0.nonce(0) != e1.nonce(0)


def test_rekey_limit_auto_and_strict():
    x, y = pair(max_messages=4)
    out = [y.open(x.seal(b"%d" % i)) for i in range(13)]
    assert out == [b"%d" % i for i in range(13)]
    assert x.send_epoch == 3 and x.send_seq == 1
    s, _ = pair(max_messages=2, auto_rekey=False)
    s.seal(b"a")
    assert not s.needs_rekey
    s.seal(b"b")
    assert s.needs_rekey
    with pytest.raises(RekeyRequired, match="limit of 2"):
        s.seal(b"c")
    s.rekey()
    s.seal(b"c")


def test_epoch_overlap_window_with_injected_clock():
    clock = Clock()
    x, y = pair(max_messages=3, overlap_seconds=10, clock=clock)
    old = [x.seal(b"o%d" % i) for i in range(3)]  # epoch 0
    new = x.seal(b"n0")  # epoch 1
    assert y.open(new) == b"n0"
    assert y.receive_epochs == [0, 1]
    clock.t += 9
    assert y.open(old[1]) == b"o1"  # previous epoch still decrypts in overlap
    clock.t += 2
    with pytest.raises(DecryptionError, match="retired"):
        y.open(old[2])
    assert y.receive_epochs == [1]


def test_epoch_skip_bound():
    x, y = pair(max_messages=1, max_epoch_skip=2)
    frames = [x.seal(b"%d" % i) for i in range(6)]
    assert y.open(frames[2]) == b"2"  # skipped epochs 1
    with pytest.raises(DecryptionError, match="too far"):
        y.open(frames[5])


def test_install_epoch_from_fresh_handshake():
    clock = Clock()
    x, y = pair(overlap_seconds=5, clock=clock)
    f_old = x.seal(b"old")
    a, b = os.urandom(32), os.urandom(32)
    x.install_epoch(10, a, b)
    y.install_epoch(10, b, a)
    assert y.open(f_old) == b"old"
    assert y.open(x.seal(b"new")) == b"new"
    assert x.send_epoch == 10
    with pytest.raises(ValueError):
        x.install_epoch(3, a, b)


def test_bad_parameters():
    with pytest.raises(InvalidKey, match="32 bytes"):
        SecureChannel(b"c", b"\0" * 16, b"\0" * 32)
    with pytest.raises(ValueError):
        SecureChannel(b"", b"\0" * 32, b"\0" * 32)
    x, _ = pair()
    assert "secret" not in repr(x) and x._send.secret.hex() not in repr(x)
