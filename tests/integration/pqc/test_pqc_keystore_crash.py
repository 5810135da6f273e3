"""A real process dies between fsync and rename of a keystore write: nothing is lost.
(The keystore itself is unit-tested in tests/unit/pqc/test_pqc_keystore.py.)"""
import subprocess
import sys
import textwrap

import pytest

from x0tta6bl4.pqc import Keystore, MasterKey


@pytest.fixture()
def mk():
    return MasterKey(bytes(range(32)))


def test_crash_between_fsync_and_rename_loses_nothing(tmp_path, mk):
    """A real process dies (os._exit) after writing+fsyncing the temp file."""
    Keystore(tmp_path, mk).put("node", b"generation-1")
    script = textwrap.dedent(
        f"""
        import os
        from x0tta6bl4.pqc import Keystore, MasterKey
        ks = Keystore({str(tmp_path)!r}, MasterKey(bytes(range(32))))
        os.replace = lambda *a, **k: os._exit(42)   # power cut right before rename
        ks.put("node", b"generation-2")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 42, proc.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1
    ks = Keystore(tmp_path, mk)
    assert ks.load_all() == {"node": b"generation-1"}
    ks.cleanup()
    ks.put("node", b"generation-2")
    assert Keystore(tmp_path, mk).load_all() == {"node": b"generation-2"}
