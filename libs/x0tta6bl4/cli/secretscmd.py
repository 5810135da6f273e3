"""meshctl secrets init: a deployment's secrets, before the first start (docs/security.md).

    meshctl secrets init [--dir var/secrets] [--trust-domain x0tta6bl4.mesh] [--force]

It makes the CA (TLS for NATS, X.509 SVIDs), nats-server's certificate, one NATS nkey per identity (the six
services, operator, audit-reader, provisioner), one ML-DSA-65 signing key per service, the trust bundle of
their public keys and nats-server's authorization (users and permissions from bus/permissions.py). It is
idempotent: what exists is kept (``--force`` remakes everything, which invalidates every signature and
credential made before). ``meshctl up`` and ``make demo`` run it for their data directory when the secrets
are missing.
"""
from __future__ import annotations

import pathlib

import typer

from x0tta6bl4.cli.common import DEFAULT_DATA_DIR, console, fail
from x0tta6bl4.runtime import locate

secrets_app = typer.Typer(help="a deployment's secrets: CA, NATS credentials, signing keys, trust bundle",
                          no_args_is_help=True)


@secrets_app.command("init")
def init(directory: pathlib.Path = typer.Option(None, "--dir",
                                                help="secrets directory (default: $X0TTA6BL4_SECRETS_DIR or "
                                                     "<data dir>/secrets)"),
         trust_domain: str = typer.Option(None, "--trust-domain",
                                          help="SPIFFE trust domain (default: the existing one, else "
                                               "x0tta6bl4.mesh)"),
         force: bool = typer.Option(False, "--force", help="remake every key and certificate"),
         data_dir: pathlib.Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="stack data directory")) -> None:
    """Create the secrets a stack needs (idempotent; prints what it made)."""
    from x0tta6bl4.runtime.secrets import SecretsError
    from x0tta6bl4.runtime.secrets import init as init_secrets
    root = (directory or locate.secrets_dir(data_dir)).resolve()
    if trust_domain is not None and (not trust_domain or any(c in trust_domain for c in "/: ")):
        fail(f"--trust-domain {trust_domain!r}: expected a DNS-like name such as x0tta6bl4.mesh")
    made: list[str] = []
    try:
        s = init_secrets(root, trust_domain, force=force, made=made)
    except (SecretsError, OSError) as e:
        fail(str(e))
    domain = s.trust().trust_domain
    if made:
        console.print(f"secrets in {root} (trust domain {domain}): made {len(made)} files")
        for m in made:
            console.print(f"  {m}")
    else:
        console.print(f"secrets in {root} (trust domain {domain}) are complete: nothing to make")
    console.print(f"clients: CA {s.ca_cert}; operator credentials {s.nkey_file('operator')}; "
                  f"audit reader {s.nkey_file('audit-reader')}")
