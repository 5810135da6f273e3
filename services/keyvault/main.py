"""Keyvault: PQC identities and keys (gRPC for people, NATS request/reply for services)."""
from __future__ import annotations

import sys

from x0tta6bl4.bus.app import Service
from x0tta6bl4.config import CommonSettings, ConfigError, load_settings


class KeyvaultSettings(CommonSettings):
    pass


def build(settings: KeyvaultSettings) -> Service:
    return Service("keyvault", settings)


def main() -> None:
    try:
        settings = load_settings(KeyvaultSettings)
    except ConfigError as e:
        print(f"keyvault: config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    build(settings).run()


if __name__ == "__main__":
    main()
