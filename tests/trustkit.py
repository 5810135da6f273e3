"""Signing keys and a trust bundle made for a test (x0tta6bl4.trust), written where settings can load them.

``Keys.make(tmp_path)`` generates one ML-DSA-65 key per service with the roles a ``meshctl secrets init``
bundle gives it, writes each seed to ``<dir>/signing/<service>.seed`` and the bundle to ``<dir>/trust.json``.
``keys.settings("planner")`` are the keyword settings of that service (``signing_key_file``, ``trust_file``),
``keys.env("planner")`` the same as X0TTA6BL4_* variables; ``keys.signers["planner"]`` signs in the test.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

from x0tta6bl4.trust import ROLES, Signer, TrustBundle


@dataclass(frozen=True)
class Keys:
    root: pathlib.Path
    signers: dict[str, Signer]
    bundle: TrustBundle

    @classmethod
    def make(cls, root: pathlib.Path, trust_domain: str = "x0tta6bl4.mesh") -> Keys:
        root = pathlib.Path(root)
        signers = {svc: Signer.generate(svc) for svc in ROLES}
        bundle = TrustBundle(trust_domain, tuple(s.trusted(ROLES[svc]) for svc, s in signers.items()))
        keys = cls(root, signers, bundle)
        keys.signing_file("planner").parent.mkdir(parents=True, exist_ok=True)
        for svc, s in signers.items():
            keys.signing_file(svc).write_bytes(s.seed_bytes_unsafe())
        keys.trust_file.write_text(bundle.to_json())
        return keys

    @property
    def trust_file(self) -> pathlib.Path:
        return self.root / "trust.json"

    def signing_file(self, service: str) -> pathlib.Path:
        return self.root / "signing" / f"{service}.seed"

    def settings(self, service: str) -> dict[str, pathlib.Path]:
        return {"signing_key_file": self.signing_file(service), "trust_file": self.trust_file}

    def env(self, service: str) -> dict[str, str]:
        return {f"X0TTA6BL4_{k.upper()}": str(v) for k, v in self.settings(service).items()}
