"""The master key and the local keystore, loaded before the service starts.

The master key comes from ``X0TTA6BL4_MASTER_KEY`` (hex or base64 of 32 bytes) or
``X0TTA6BL4_MASTER_KEY_FILE``; with neither, a key file ``<data_dir>/keys/keyvault-master.key``
(0600) is created on first start (then copy it to every other replica). The master key is
never logged: the functions here return a one-line note on where it came from.
"""
from __future__ import annotations

import pathlib

from pydantic import SecretStr

from x0tta6bl4.config import ConfigError
from x0tta6bl4.pqc import Keystore, KeystoreError, MasterKey

MASTER_KEY_FILE_NAME = "keyvault-master.key"


def load_master_key(master_key: SecretStr | None, master_key_file: pathlib.Path | None,
                    data_dir: pathlib.Path) -> tuple[MasterKey, str]:
    """The master key and a one-line note on where it came from (never the key)."""
    if master_key is not None and master_key_file is not None:
        raise ConfigError("set X0TTA6BL4_MASTER_KEY or X0TTA6BL4_MASTER_KEY_FILE, not both")
    if master_key is not None:
        try:
            return MasterKey.from_text(master_key.get_secret_value()), "master key from X0TTA6BL4_MASTER_KEY"
        except KeystoreError as e:
            raise ConfigError(f"X0TTA6BL4_MASTER_KEY: {e}") from None
    path = master_key_file
    generated = False
    if path is None:
        path = pathlib.Path(data_dir) / "keys" / MASTER_KEY_FILE_NAME
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                MasterKey.generate().write_file(path)
                generated = True
            except KeystoreError:
                if not path.exists():
                    raise
                # another replica sharing this data dir created it a moment ago: use theirs
    try:
        mk = MasterKey.from_file(path)
    except KeystoreError as e:
        raise ConfigError(f"X0TTA6BL4_MASTER_KEY_FILE: {e}") from None
    if generated:
        return mk, (f"generated a new master key file {path} (mode 0600); back it up: without it the keystore "
                    f"cannot be decrypted")
    mode = path.stat().st_mode & 0o777
    note = f"master key from file {path}"
    if mode & 0o077:
        note += f" (WARNING: mode {mode:o} lets others read it; chmod 600)"
    return mk, note


def open_keystore(master_key: SecretStr | None, master_key_file: pathlib.Path | None,
                  data_dir: pathlib.Path) -> tuple[MasterKey, Keystore, str]:
    """The master key and the local keystore ``<data_dir>/keyvault`` (the shared state is opened
    once NATS is up); ConfigError naming what is wrong."""
    mk, note = load_master_key(master_key, master_key_file, data_dir)
    directory = pathlib.Path(data_dir) / "keyvault"
    try:
        ks = Keystore(directory, mk)
        ks.cleanup()
    except (KeystoreError, OSError) as e:
        raise ConfigError(f"cannot open the keystore {directory}: {e}") from None
    return mk, ks, note
