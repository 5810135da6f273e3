"""A mesh host's key directory: the private keys of the nodes it hosts, generated on this machine.

Private keys never leave the host: it generates each node's identity (:meth:`NodeIdentity.generate`) and asks
keyvault to certify the public halves (``CertifyKeys``, :mod:`x0tta6bl4.keyvault.certify`). The key is written
here *before* it is certified, so a crash between certification and use cannot lose a certified key.

Layout (a directory of mode 0700, one 0600 file per entry, written atomically: temp file, fsync, rename,
fsync of the directory; see :func:`x0tta6bl4.pqc.keystore.write_secret_file`):

``<node>.key``    the node's current generation (certified, or being certified at its first start)
``<node>.next``   a newer generation generated for a rotation and not yet confirmed as certified

Each file holds :meth:`NodeIdentity.export_private_unsafe` (SPIFFE id, both private keys, validity,
generation). When certification succeeds ``<node>.next`` replaces ``<node>.key``; after a crash the host
compares both with keyvault's current record for the node and keeps the one keyvault certified. The
directory is the only copy of the private keys: protect it like an SSH host key (the files are not
encrypted; the directory and files are readable by the host's user only). Nothing here talks to the network.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from x0tta6bl4.pqc import NodeIdentity, PQCError
from x0tta6bl4.pqc.identity import IdentityKey, KeyPurpose, validate_node_id
from x0tta6bl4.pqc.keystore import write_secret_file

__all__ = ["CURRENT", "ENV_KEY_DIR", "NEXT", "HostKeyDir", "restamp"]

log = logging.getLogger("x0tta6bl4.mesh.hostkeys")

ENV_KEY_DIR = "X0TTA6BL4_MESH_KEY_DIR"
CURRENT, NEXT = "key", "next"


def restamp(ident: NodeIdentity, generation: int) -> NodeIdentity:
    """The same keys labelled with ``generation`` (the generation keyvault gave them when it certified)."""
    if ident.generation == generation:
        return ident
    s, k = ident.signing, ident.kem
    return NodeIdentity(ident.spiffe_id,
                        IdentityKey(KeyPurpose.SIGNING, s.private, s.not_before, s.not_after, generation),
                        IdentityKey(KeyPurpose.KEM, k.private, k.not_before, k.not_after, generation))


class HostKeyDir:
    """The key directory of one mesh host (see the module doc). Raises ValueError naming the path when the
    directory cannot be created or written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.path.stat()
            if not stat.S_ISDIR(st.st_mode):
                raise ValueError(f"mesh host key directory {self.path} is not a directory")
            if st.st_mode & 0o077:
                os.chmod(self.path, 0o700)      # created by someone else with a looser mode: ours only
        except OSError as e:
            raise ValueError(f"mesh host key directory {self.path}: {e.strerror or e}") from None

    def __repr__(self) -> str:
        return f"<HostKeyDir {str(self.path)!r}>"

    def file(self, node: str, slot: str = CURRENT) -> Path:
        if slot not in (CURRENT, NEXT):
            raise ValueError(f"unknown key slot {slot!r}")
        try:
            return self.path / f"{validate_node_id(node)}.{slot}"
        except PQCError as e:
            raise ValueError(f"node {node!r:.80} cannot have keys: {e}") from None

    def load(self, node: str, slot: str = CURRENT) -> NodeIdentity | None:
        """The identity in ``slot`` for ``node``; None when there is none, or when the file is damaged or
        belongs to another node (logged: the host then generates a new generation)."""
        f = self.file(node, slot)
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("node %s: cannot read %s: %s; a new key will be generated", node, f, e.strerror or e)
            return None
        try:
            ident = NodeIdentity.import_private(data)
        except PQCError as e:
            log.warning("node %s: %s is not a node identity (%s); a new key will be generated", node, f, e)
            return None
        if ident.spiffe_id.node_id != node:
            log.warning("node %s: %s holds the identity of %s; a new key will be generated", node, f,
                        ident.spiffe_id.node_id)
            return None
        return ident

    def held(self, node: str) -> list[NodeIdentity]:
        """Every identity kept for ``node`` (current first, then a pending next generation)."""
        return [i for i in (self.load(node, CURRENT), self.load(node, NEXT)) if i is not None]

    def save(self, ident: NodeIdentity, slot: str = CURRENT) -> None:
        """Write ``ident`` to its node's ``slot`` atomically (0600)."""
        f = self.file(ident.spiffe_id.node_id, slot)
        try:
            write_secret_file(f, ident.export_private_unsafe())
        except OSError as e:
            raise ValueError(f"cannot write the key of node {ident.spiffe_id.node_id} to {f}: "
                             f"{e.strerror or e}") from None

    def promote(self, ident: NodeIdentity) -> None:
        """``ident`` (just certified) becomes the node's current key; a pending next generation is dropped."""
        node = ident.spiffe_id.node_id
        self.save(ident, CURRENT)
        try:
            self.file(node, NEXT).unlink(missing_ok=True)
        except OSError as e:
            log.warning("node %s: cannot remove %s: %s", node, self.file(node, NEXT), e.strerror or e)

    def remove(self, node: str) -> None:
        """Forget every key of ``node`` (tests and a node leaving this host)."""
        for slot in (CURRENT, NEXT):
            self.file(node, slot).unlink(missing_ok=True)
