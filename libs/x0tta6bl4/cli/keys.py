"""meshctl keys: a thin gRPC client of the keyvault service.

    meshctl keys info                         backend in use (name, version, algorithms), root key
    meshctl keys issue NODE [--private-out F] issue an identity (optionally save its private bundle, 0600)
    meshctl keys list [--revoked]             identities and their key status
    meshctl keys show NODE                    one identity, all generations
    meshctl keys rotate NODE... | --all [--overlap S]
    meshctl keys revoke NODE [--reason R]
    meshctl keys attest NODE --identity F     sign a fresh challenge with the saved bundle, ask keyvault to check it

Target: --keyvault host:port, else $X0TTA6BL4_KEYVAULT_ADDR, else 127.0.0.1:50052. Mutual TLS as an operator
(``x0tta6bl4.rpc.svid.operator_svid``: $X0TTA6BL4_SVID_CERT_FILE/_KEY_FILE, else the stack's CA in
<data dir>/secrets, else an SVID from keyvault over the bus); keyvault's policy decides every call.
"""
from __future__ import annotations

import datetime as dt
import json
import pathlib
import secrets
from typing import Any

import typer
from rich.table import Table

from x0tta6bl4.cli.common import console, fail
from x0tta6bl4.runtime import locate

keys_app = typer.Typer(help="keyvault: node identities, PQC keys, rotation, revocation", no_args_is_help=True)

ADDR_ENV, DEFAULT_ADDR = locate.GRPC["keyvault"]
KeyvaultOpt = typer.Option(None, "--keyvault", help=f"keyvault gRPC address (default ${ADDR_ENV} or {DEFAULT_ADDR})")
JsonOpt = typer.Option(False, "--json", help="print JSON instead of a table")


def _addr(explicit: str | None) -> str:
    return locate.grpc_addr("keyvault", explicit)


def _call(addr: str | None, method: str, request: Any, timeout: float = 30.0) -> Any:
    import grpc

    from x0tta6bl4.rpc import svid as svids
    from x0tta6bl4.v1 import keyvault_pb2_grpc

    target = _addr(addr)
    try:
        me = svids.operator_svid()
    except svids.SvidError as e:
        fail(f"no operator SVID for mutual TLS: {e}")
    try:
        with svids.secure_channel(target, me, "keyvault", svids.trust_domain(),
                                  options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as ch:
            return getattr(keyvault_pb2_grpc.KeyvaultStub(ch), method)(request, timeout=timeout)
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            fail(f"cannot reach keyvault at {target} ({code.name}); "
                 "is the stack up? (make up, or --keyvault host:port)")
        fail(f"{code.name if code else 'error'}: {e.details() if hasattr(e, 'details') else e}")
    except ValueError as e:  # malformed target
        fail(f"bad keyvault address {target!r}: {e}")
    raise AssertionError("unreachable")


def _pb():
    from x0tta6bl4.v1 import keyvault_pb2
    return keyvault_pb2


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _rec_dict(r) -> dict:
    d = {"node_id": r.node_id, "spiffe_id": r.spiffe_id, "generation": r.generation, "status": r.status,
         "sig_key_id": r.sig_key_id, "sig_algorithm": r.sig_algorithm, "kem_key_id": r.kem_key_id,
         "kem_algorithm": r.kem_algorithm, "not_before": r.not_before_unix, "not_after": r.not_after_unix,
         "root_key_id": r.root_key_id}
    if r.status == "retiring":
        d["retiring_until"] = r.retiring_until_unix
    if r.retired_at_unix:
        d["retired_at"] = r.retired_at_unix
    if r.revoked:
        d["revoked_at"], d["revocation_reason"] = r.revoked_at_unix, r.revocation_reason
    if len(r.previous):
        d["previous"] = [_rec_dict(p) for p in r.previous]
    return d


def _status(s: str) -> str:
    return {"active": "[green]active[/]", "retiring": "[yellow]retiring[/]", "retired": "[dim]retired[/]",
            "revoked": "[red]revoked[/]"}.get(s, s)


def _records_table(records, title: str = "", history: bool = False) -> Table:
    t = Table(title=title or None)
    for c in ("node", "gen", "status", "signing key", "KEM key", "valid until", "note"):
        t.add_column(c)
    for r in records:
        rows = [r] + (list(r.previous) if history else [])
        for i, x in enumerate(rows):
            note = ""
            if x.status == "retiring":
                note = f"accepted until {_ts(x.retiring_until_unix)}"
            elif x.status == "retired":
                note = f"retired {_ts(x.retired_at_unix)}"
            elif x.status == "revoked":
                note = f"revoked {_ts(x.revoked_at_unix)}: {x.revocation_reason or '-'}"
            elif not history and len(r.previous) and r.previous[0].status == "retiring":
                note = f"gen {r.previous[0].generation} retiring until {_ts(r.previous[0].retiring_until_unix)}"
            t.add_row(x.node_id if i == 0 else "", str(x.generation), _status(x.status), x.sig_key_id, x.kem_key_id,
                      _ts(x.not_after_unix), note)
    return t


def _print(records, as_json: bool, title: str = "", history: bool = False) -> None:
    if as_json:
        console.print_json(json.dumps([_rec_dict(r) for r in records]))
    else:
        console.print(_records_table(records, title, history))


@keys_app.command("info")
def info(keyvault: str | None = KeyvaultOpt, as_json: bool = JsonOpt) -> None:
    """The PQC backend keyvault uses (name, version, algorithms) and its root key."""
    from x0tta6bl4.keyvault.pin import fingerprint
    r = _call(keyvault, "Info", _pb().InfoRequest())
    d = {"backend": r.backend, "backend_version": r.backend_version, "algorithms": list(r.algorithms),
         "classical": list(r.classical), "hybrids": list(r.hybrids), "root_key_id": r.root_key_id,
         "root_public_key_bytes": len(r.root_public_key), "identities": r.identities, "kv_bucket": r.kv_bucket,
         "default_overlap_s": r.default_overlap_s, "keyvault": _addr(keyvault),
         "root_fingerprint": fingerprint(r.root_public_key)}
    if as_json:
        console.print_json(json.dumps(d))
        return
    console.print(f"backend     [bold]{r.backend}[/] {r.backend_version}")
    console.print(f"algorithms  {', '.join(r.algorithms)}")
    console.print(f"hybrids     {', '.join(r.hybrids)}")
    console.print(f"classical   {', '.join(r.classical)}")
    console.print(f"root key    ML-DSA-65 {r.root_key_id} ({len(r.root_public_key)} bytes)")
    console.print(f"root pin    {fingerprint(r.root_public_key)}  (X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT)")
    console.print(f"identities  {r.identities}   KV bucket '{r.kv_bucket}'   default overlap {r.default_overlap_s:g} s")


@keys_app.command("issue")
def issue(node: str = typer.Argument(..., help="node id ([a-z0-9][a-z0-9-]{0,62})"),
          private_out: pathlib.Path | None = typer.Option(
              None, "--private-out", help="write the node's private bundle to this new file (mode 0600)"),
          keyvault: str | None = KeyvaultOpt, as_json: bool = JsonOpt) -> None:
    """Issue a node identity (signing + KEM keys, root-signed records)."""
    if private_out is not None and private_out.exists():
        fail(f"{private_out} exists; refusing to overwrite a private key file")
    r = _call(keyvault, "IssueIdentity",
              _pb().IssueIdentityRequest(node_id=node, return_private=private_out is not None))
    if private_out is not None:
        from x0tta6bl4.pqc.keystore import write_secret_file
        try:
            write_secret_file(private_out, r.private_bundle, create_only=True)
        except OSError as e:
            fail(f"cannot create {private_out}: {e.strerror or 'exists'}")
    _print([r.record], as_json, f"issued {r.record.spiffe_id}")
    if private_out is not None and not as_json:
        console.print(f"private bundle written to {private_out} (0600) - keep it secret")


@keys_app.command("list")
def list_(revoked: bool = typer.Option(False, "--revoked", help="include revoked identities"),
          keyvault: str | None = KeyvaultOpt, as_json: bool = JsonOpt) -> None:
    """Every identity with its current generation."""
    r = _call(keyvault, "ListIdentities", _pb().ListIdentitiesRequest(include_revoked=revoked))
    _print(r.records, as_json, f"{len(r.records)} identities")


@keys_app.command("show")
def show(node: str, keyvault: str | None = KeyvaultOpt, as_json: bool = JsonOpt) -> None:
    """One identity with every known generation (active, retiring, retired, revoked)."""
    r = _call(keyvault, "GetPublicKeys", _pb().GetPublicKeysRequest(node_id=node))
    _print([r], as_json, r.spiffe_id, history=True)


@keys_app.command("rotate")
def rotate(nodes: list[str] | None = typer.Argument(None, help="node ids (or --all)"),
           all_: bool = typer.Option(False, "--all", help="rotate every non-revoked node identity (the nodes "
                                     "mesh hosts run; operators' and voters' too with --include-operators)"),
           include_operators: bool = typer.Option(False, "--include-operators",
                                                  help="with --all: also the identities no mesh host runs"),
           overlap: float = typer.Option(0.0, "--overlap", help="seconds the old keys stay accepted (0 = default)"),
           request_id: str = typer.Option("", "--request-id", help="idempotency key: a repeat rotates nothing"),
           keyvault: str | None = KeyvaultOpt, as_json: bool = JsonOpt) -> None:
    """Rotate keys: new generation active, old one retiring for the overlap window."""
    if not nodes and not all_:
        fail("name nodes to rotate, or --all")
    r = _call(keyvault, "Rotate", _pb().RotateRequest(node_ids=nodes or [], all=all_, overlap_s=overlap,
                                                      request_id=request_id, include_operators=include_operators),
              timeout=120)
    _print(r.records, as_json, f"rotated {len(r.records)} identities")


@keys_app.command("revoke")
def revoke(node: str, reason: str = typer.Option("", "--reason"),
           keyvault: str | None = KeyvaultOpt, as_json: bool = JsonOpt) -> None:
    """Revoke every key of a node (published to the KV bucket at once)."""
    r = _call(keyvault, "Revoke", _pb().RevokeRequest(node_id=node, reason=reason))
    _print([r], as_json, f"revoked {r.spiffe_id}", history=True)


@keys_app.command("attest")
def attest(node: str,
           identity: pathlib.Path | None = typer.Option(
               None, "--identity",
               help="private bundle of the node (from issue --private-out): sign a fresh challenge"),
           challenge: str | None = typer.Option(None, "--challenge", help="hex challenge (with --signature)"),
           signature: pathlib.Path | None = typer.Option(None, "--signature", help="file with the raw signature"),
           keyvault: str | None = KeyvaultOpt, as_json: bool = JsonOpt) -> None:
    """Check that NODE holds its ML-DSA-65 key: a challenge signed by the node, verified by keyvault."""
    if identity is not None:
        from x0tta6bl4.keyvault.vault import sign_attestation
        from x0tta6bl4.pqc import NodeIdentity, PQCError
        try:
            ident = NodeIdentity.import_private(identity.read_bytes())
        except OSError as e:
            fail(f"cannot read {identity}: {e.strerror}")
        except PQCError as e:
            fail(f"{identity} is not a node identity bundle: {e}")
        ch = secrets.token_bytes(32)
        sig = sign_attestation(ident, ch)
    elif challenge is not None and signature is not None:
        try:
            ch = bytes.fromhex(challenge)
            sig = signature.read_bytes()
        except ValueError:
            fail("--challenge must be hex")
        except OSError as e:
            fail(f"cannot read {signature}: {e.strerror}")
    else:
        fail("give --identity FILE, or --challenge HEX and --signature FILE")
    r = _call(keyvault, "Attest", _pb().AttestRequest(node_id=node, challenge=ch, signature=sig))
    if as_json:
        console.print_json(json.dumps({"node_id": node, "valid": r.valid, "reason": r.reason, "key_id": r.key_id,
                                       "generation": r.generation, "status": r.status}))
    elif r.valid:
        console.print(f"[green]valid[/]: {node} {r.reason} (key {r.key_id})")
    else:
        console.print(f"[red]INVALID[/]: {node}: {r.reason}")
    if not r.valid:
        raise typer.Exit(1)
