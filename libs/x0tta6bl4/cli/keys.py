"""meshctl keys: a thin gRPC client of the keyvault service.

    meshctl keys info                         backend in use (name, version, algorithms), root key
    meshctl keys issue NODE                   a custodial identity (keyvault generates and keeps the keys)
    meshctl keys issue NODE --private-out F   generate the identity HERE, save it (0600) and have keyvault certify
                                              the public keys (CertifyKeys): nothing private leaves this machine
    meshctl keys list [--revoked]             identities and their key status
    meshctl keys show NODE                    one identity, all generations
    meshctl keys rotate NODE... | --all [--overlap S] [--wait S]
    meshctl keys revoke NODE [--reason R]
    meshctl keys attest NODE --identity F     sign a fresh challenge with the saved bundle, ask keyvault to check it
    meshctl keys recipient-keygen R.key       an ML-KEM-768 recipient key pair (R.key 0600, R.pub) for exports
    meshctl keys export NODE --recipient R.pub --out F
                                              offline edge provisioning: a custodial identity's private bundle
                                              wrapped to R.pub, once (keyvault destroys its copy)
    meshctl keys unwrap F --recipient-key R.key --out BUNDLE
                                              the private bundle (0600, the --private-out format) on the edge side

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


def _refuse_existing(path: pathlib.Path | None, what: str = "a private key file") -> None:
    if path is not None and path.exists():
        fail(f"{path} exists; refusing to overwrite {what}")


def _write_secret(path: pathlib.Path, data: bytes) -> None:
    from x0tta6bl4.pqc.keystore import write_secret_file
    try:
        write_secret_file(path, data, create_only=True)
    except OSError as e:
        fail(f"cannot create {path}: {e.strerror or 'exists'}")


@keys_app.command("issue")
def issue(node: str = typer.Argument(..., help="node id ([a-z0-9][a-z0-9-]{0,62})"),
          private_out: pathlib.Path | None = typer.Option(
              None, "--private-out", help="generate the identity on this machine, write its private bundle to "
                                          "this new file (mode 0600) and have keyvault certify the public keys"),
          keyvault: str | None = KeyvaultOpt, as_json: bool = JsonOpt) -> None:
    """A node identity (signing + KEM keys, root-signed records). Without --private-out keyvault generates and
    keeps the keys (custodial); with it the keys are generated here and only the public halves go to keyvault."""
    if private_out is None:
        r = _call(keyvault, "IssueIdentity", _pb().IssueIdentityRequest(node_id=node))
        _print([r.record], as_json, f"issued {r.record.spiffe_id} (custodial)")
        return
    _refuse_existing(private_out)
    import time

    from x0tta6bl4.keyvault import certify as cert
    from x0tta6bl4.pqc import NodeIdentity, PQCError
    from x0tta6bl4.rpc import svid as svids
    try:
        ident = NodeIdentity.generate(svids.trust_domain(), node, now=time.time(), generation=1)
    except PQCError as e:
        fail(str(e))
    _write_secret(private_out, ident.export_private_unsafe())   # saved before certifying: never a lost key
    certified = False
    try:
        req = cert.certify_request(ident, secrets.token_bytes(16))
        rec = _call(keyvault, "CertifyKeys", _pb().CertifyKeysRequest(
            node_id=req.node_id, signing_public_key=req.signing_public_key, kem_public_key=req.kem_public_key,
            nonce=req.nonce, timestamp_unix=req.timestamp, proof=req.proof))
        certified = True
    finally:
        if not certified:            # keyvault refused (the node exists, the role is missing): no stray key file
            private_out.unlink(missing_ok=True)
    _print([rec], as_json, f"certified {rec.spiffe_id} (keys generated here)")
    if not as_json:
        console.print(f"private bundle written to {private_out} (0600) - keep it secret; keyvault holds no copy")


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
           wait: float = typer.Option(0.0, "--wait", help="seconds to wait for nodes that hold their own keys to "
                                      "certify the next generation (0 = keyvault's default, negative = no wait)"),
           keyvault: str | None = KeyvaultOpt, as_json: bool = JsonOpt) -> None:
    """Rotate keys: new generation active, old one retiring for the overlap window. Keyvault generates the
    keys of custodial identities; nodes that hold their own keys get a rotation request and certify their
    next generation themselves (listed as rotation_pending if they have not within --wait)."""
    if not nodes and not all_:
        fail("name nodes to rotate, or --all")
    r = _call(keyvault, "Rotate", _pb().RotateRequest(node_ids=nodes or [], all=all_, overlap_s=overlap,
                                                      request_id=request_id, include_operators=include_operators,
                                                      wait_s=wait),
              timeout=120 + max(wait, 0.0) + 15)
    _print(r.records, as_json, f"rotated {len(r.records) - len(r.pending)} identities"
                               + (f", {len(r.pending)} pending" if r.pending else ""))
    if r.pending and not as_json:
        console.print(f"[yellow]rotation pending[/] for {', '.join(r.pending)}: requested (KV keys rot.<node>); "
                      f"the node certifies its next generation when it sees the request")


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


@keys_app.command("recipient-keygen")
def recipient_keygen(key_out: pathlib.Path = typer.Argument(..., help="the private key file to create (0600)"),
                     pub_out: pathlib.Path | None = typer.Option(
                         None, "--pub", help="the public key file (default: KEY_OUT with suffix .pub)")) -> None:
    """An ML-KEM-768 recipient key pair for `keys export`: the private key (64-byte seed, 0600) stays on the
    machine that provisions the edge node; give the .pub file (1184 bytes) to the operator who exports."""
    from x0tta6bl4.pqc import key_id
    from x0tta6bl4.pqc import recipient_keygen as keygen
    pub_path = pub_out or key_out.with_suffix(".pub")
    if pub_path == key_out:
        fail(f"the public key file would overwrite the private one ({key_out}): give --pub")
    _refuse_existing(key_out)
    _refuse_existing(pub_path, "a key file")
    priv, pub = keygen()
    _write_secret(key_out, priv)
    try:
        with pub_path.open("xb") as f:
            f.write(pub)
    except OSError as e:
        key_out.unlink(missing_ok=True)
        fail(f"cannot create {pub_path}: {e.strerror}")
    console.print(f"recipient key {key_id(pub)}: private {key_out} (0600, keep it), public {pub_path}")


@keys_app.command("export")
def export(node: str = typer.Argument(..., help="a custodial identity (issued by keyvault, never exported)"),
           recipient: pathlib.Path = typer.Option(..., "--recipient", help="recipient ML-KEM-768 public key "
                                                  "(keys recipient-keygen)"),
           out: pathlib.Path = typer.Option(..., "--out", help="the wrapped bundle file to create"),
           keyvault: str | None = KeyvaultOpt, as_json: bool = JsonOpt) -> None:
    """Offline edge provisioning: NODE's private bundle wrapped to the recipient key (ML-KEM-768 + HKDF-SHA256 +
    AES-256-GCM). Single use: keyvault destroys its copy; the node holds its keys from then on (it certifies its
    own rotations). Operators only; audited."""
    _refuse_existing(out, "a file")
    try:
        pub = recipient.read_bytes()
    except OSError as e:
        fail(f"cannot read {recipient}: {e.strerror}")
    r = _call(keyvault, "ExportIdentity", _pb().ExportIdentityRequest(node_id=node, recipient_kem_public_key=pub))
    _write_secret(out, r.wrapped_bundle)
    if as_json:
        console.print_json(json.dumps({"node_id": node, "generation": r.record.generation, "out": str(out),
                                       "recipient_key_id": r.recipient_key_id,
                                       "exported_at": r.exported_at_unix}))
        return
    console.print(f"exported {r.record.spiffe_id} generation {r.record.generation} wrapped to recipient key "
                  f"{r.recipient_key_id}: {out}; keyvault no longer holds its private keys (single use)")


@keys_app.command("unwrap")
def unwrap(wrapped: pathlib.Path = typer.Argument(..., help="a wrapped bundle (keys export --out)"),
           recipient_key: pathlib.Path = typer.Option(..., "--recipient-key", help="the recipient private key"),
           out: pathlib.Path = typer.Option(..., "--out", help="the private bundle file to create (0600)"),
           as_json: bool = JsonOpt) -> None:
    """Open a wrapped bundle with the recipient private key (offline, no keyvault): writes the node's private
    bundle in the `keys issue --private-out` format."""
    from x0tta6bl4.pqc import NodeIdentity, PQCError, unwrap_bundle
    _refuse_existing(out)
    try:
        data, key = wrapped.read_bytes(), recipient_key.read_bytes()
    except OSError as e:
        fail(f"cannot read {e.filename}: {e.strerror}")
    try:
        head, bundle = unwrap_bundle(data, key)
        ident = NodeIdentity.import_private(bundle)
    except PQCError as e:
        fail(f"cannot unwrap {wrapped}: {e}")
    if (ident.spiffe_id.node_id, ident.generation) != (head.node_id, head.generation):
        fail(f"{wrapped}: the bundle inside is {ident.spiffe_id.node_id} generation {ident.generation}, the "
             f"header says {head.node_id} generation {head.generation}")
    _write_secret(out, bundle)
    if as_json:
        console.print_json(json.dumps({"node_id": head.node_id, "generation": head.generation, "out": str(out),
                                       "sig_key_id": ident.signing.key_id}))
        return
    console.print(f"{ident.uri} generation {head.generation} (signing key {ident.signing.key_id}) written to "
                  f"{out} (0600)")
