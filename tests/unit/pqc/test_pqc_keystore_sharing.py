"""Several processes (keyvault replicas) sharing one keystore directory."""
import os

import pytest
from testkit import unused_pid

from x0tta6bl4.pqc.keystore import Keystore, MasterKey


def test_create_only_refuses_to_overwrite(tmp_path):
    ks = Keystore(tmp_path, MasterKey.generate())
    ks.put("root", b"first", create_only=True)
    with pytest.raises(FileExistsError):
        ks.put("root", b"second", create_only=True)
    assert ks.get("root") == b"first"


def test_cleanup_keeps_a_live_writers_temp_file_and_removes_a_dead_ones(tmp_path):
    ks = Keystore(tmp_path, MasterKey.generate())
    live = tmp_path / f".root.key.{os.getppid()}.abcd.tmp"
    dead_pid = unused_pid()
    dead = tmp_path / f".root.key.{dead_pid}.abcd.tmp"
    live.write_bytes(b"x")
    dead.write_bytes(b"x")
    removed = ks.cleanup()
    assert dead.name in removed and not dead.exists()
    assert live.exists()


def test_secret_files_are_0600_and_create_only_refuses_a_second_writer(tmp_path):
    from x0tta6bl4.pqc.keystore import write_secret_file
    p = tmp_path / "keys" / "audit-x.seed"
    write_secret_file(p, b"seed-1", create_only=True)
    assert p.read_bytes() == b"seed-1" and (p.stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileExistsError):
        write_secret_file(p, b"seed-2", create_only=True)
    write_secret_file(p, b"seed-3")
    assert p.read_bytes() == b"seed-3" and not list(p.parent.glob("*.tmp"))
