"""meshctl gov: a thin gRPC client of the governance service.

    meshctl gov keygen --out alice.key                 ML-DSA-65 voter key (seed 0600 + alice.key.pub)
    meshctl gov register VOTER --balance 100 --key alice.key
    meshctl gov balance VOTER
    meshctl gov create --title "reroute n3" --duration 300 [--action reroute --target n3 --param k=v]
                       [--proposer VOTER --key alice.key]      signed by a ledger identity, else admin token
        --action topology_update --param link=n1,n2 --param state=down|up     a link out of service / back
        --action config_change --param hello_interval=0.3 [--param miss_count=4]   every node's HELLO timing
        (x0tta6bl4.execution.changes; a passed proposal is executed, verified and rolled back if it harms)
    meshctl gov vote PROPOSAL --voter VOTER --choice yes --tokens 100 --key alice.key [--vote-id ID]
    meshctl gov status PROPOSAL
    meshctl gov list [--state active] [--page-size 50]
    meshctl gov cancel PROPOSAL --proposer NAME [--key alice.key]
    meshctl gov watch [--state passed]

The service address comes from --addr, X0TTA6BL4_GOV_ADDR, or 127.0.0.1:50051. The channel is mutual TLS as an
operator (``x0tta6bl4.rpc.svid.operator_svid``); governance's policy decides every call.
Errors print one line (the gRPC code and the service's message), never a traceback.
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import sys
from typing import Any, cast

import typer

from x0tta6bl4.runtime import locate

DEFAULT_ADDR = locate.GRPC["governance"][1]
ACTIONS = ("reroute", "rotate_keys", "deploy", "config_change", "isolate", "restart", "reinstate", "topology_update")
NEEDS_TARGET = {"reroute": "route around", "isolate": "isolate", "restart": "restart",
                "reinstate": "route through again"}
STATES = ("active", "passed", "rejected", "executed", "expired", "canceled")

gov_app = typer.Typer(help="governance: proposals and signed quadratic votes (gRPC client)",
                      no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


class GovError(Exception):
    """A problem to print as one line."""


# ---- the library part (used by meshctl gov and skill/scripts/dao-vote.py) ----------------------

def address(explicit: str | None = None) -> str:
    return locate.grpc_addr("governance", explicit)


def stub(addr: str, timeout_s: float = 5.0):
    import grpc

    from x0tta6bl4.rpc import svid as svids
    from x0tta6bl4.v1 import governance_pb2_grpc as gg
    try:
        me = svids.operator_svid()
    except svids.SvidError as e:
        raise GovError(f"no operator SVID for mutual TLS: {e}") from None
    channel = svids.secure_channel(addr, me, "governance", svids.trust_domain())
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise GovError(f"cannot reach the governance service at {addr} (is it running? set --addr or "
                       f"X0TTA6BL4_GOV_ADDR)") from None
    return gg.GovernanceStub(channel)


def call(method, request, timeout_s: float = 10.0, metadata: tuple = ()):
    import grpc
    try:
        return method(request, timeout=timeout_s, metadata=metadata or None)
    except grpc.RpcError as e:
        raise GovError(f"{e.code().name}: {e.details()}") from None


def read_token_file(path: pathlib.Path | None) -> str | None:
    """The admin token in ``path`` (``--admin-token-file``), None without a path."""
    if path is None:
        return None
    try:
        return pathlib.Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise GovError(f"cannot read --admin-token-file {path}: {e}") from None


def register(addr: str, voter: str, balance: float, key_file: pathlib.Path | None = None,
             admin_token: str | None = None):
    """Register a voter in the ledger (needs the ledger admin token, see ``locate.admin_token``).
    Without ``key_file`` the voter's key is the one keyvault issued to that identity."""
    from x0tta6bl4.v1 import governance_pb2 as g
    pk = load_public(key_file) if key_file is not None else b""
    return call(stub(addr).RegisterVoter, g.RegisterVoterRequest(voter=voter, balance=balance, public_key=pk),
                metadata=locate.admin_metadata(admin_token))


def cancel(addr: str, proposal: str, proposer: str, key_file: pathlib.Path | None = None,
           admin_token: str | None = None):
    """Cancel a proposal: signed by the proposer's key when ``key_file`` is given, else with the admin token."""
    from x0tta6bl4.governance import cancel_signing_payload
    from x0tta6bl4.v1 import governance_pb2 as g
    req = g.CancelProposalRequest(id=proposal, proposer=proposer)
    metadata: tuple = ()
    if key_file is not None:
        req.nonce = secrets.token_bytes(32)
        req.signature = load_private(key_file).sign(cancel_signing_payload(proposal, proposer, req.nonce))
    else:
        metadata = locate.admin_metadata(admin_token)
    return call(stub(addr).CancelProposal, req, metadata=metadata)


def keygen(out: pathlib.Path, force: bool = False) -> pathlib.Path:
    """Write an ML-DSA-65 seed (0600) to ``out`` and the public key to ``out.pub``."""
    from x0tta6bl4.pqc import MLDSA65PrivateKey
    out = pathlib.Path(out)
    if out.exists() and not force:
        raise GovError(f"{out} exists; refusing to overwrite a key (use --force)")
    from x0tta6bl4.pqc.keystore import write_secret_file
    key = MLDSA65PrivateKey.generate()
    write_secret_file(out, key.private_bytes_unsafe())
    pub = out.with_name(out.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes())
    return pub


def load_private(path: pathlib.Path):
    from x0tta6bl4.pqc import MLDSA65PrivateKey, PQCError
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise GovError(f"cannot read key file {path}: {e.strerror}") from None
    try:
        return MLDSA65PrivateKey.from_private_bytes(data)
    except (PQCError, ValueError) as e:
        err = e
    try:   # a keyvault private bundle (meshctl keys issue --private-out): its identity's ML-DSA-65 key
        from x0tta6bl4.pqc import NodeIdentity
        return NodeIdentity.import_private(data).signing.private.mldsa
    except (PQCError, ValueError):
        raise GovError(f"{path} is neither an ML-DSA-65 private key (seed) file nor a keyvault private "
                       f"bundle: {err}") from None


def load_public(path: pathlib.Path) -> bytes:
    """A .pub file (1952 bytes) or a private key file (the public key is derived)."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise GovError(f"cannot read key file {path}: {e.strerror}") from None
    if len(data) == 1952:
        return data
    return load_private(path).public_key().public_bytes()


def action_spec(kind: str, target: str = "", params: list[str] | None = None):
    from x0tta6bl4.v1 import events_pb2
    if kind not in ACTIONS:
        raise GovError(f"--action must be one of {', '.join(ACTIONS)}, got {kind!r}")
    out = {}
    for p in params or []:
        if "=" not in p:
            raise GovError(f"--param must be KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = v
    if kind in NEEDS_TARGET and not target:     # the executor could never run it: say so before anyone votes
        raise GovError(f"INVALID_ARGUMENT: a {kind} proposal needs a target node (--target NODE: the node to "
                       f"{NEEDS_TARGET[kind]})")
    from x0tta6bl4.execution import changes
    try:
        changes.validate(kind, target, out)
    except changes.ChangeError as e:
        raise GovError(f"INVALID_ARGUMENT: {e}") from None
    action_kind = cast("events_pb2.ActionKind", events_pb2.ActionKind.Value("ACTION_KIND_" + kind.upper()))
    return events_pb2.ActionSpec(kind=action_kind, target_node=target, params=out)


def create(addr: str, title: str, duration_s: float, *, description: str = "", action: str = "config_change",
           target: str = "", params: list[str] | None = None, proposer: str = "", quorum: float = 0.5,
           threshold: float = 0.5, execution_window_s: float = 0.0, request_id: str = "",
           key_file: pathlib.Path | None = None, admin_token: str | None = None):
    """Open a proposal: signed by the proposer's key when ``key_file`` is given (the proposer is then
    a ledger identity), else with the ledger admin token (``locate.admin_token``)."""
    from x0tta6bl4.governance import Action, ActionKind, GovernanceError, proposal_signing_payload
    from x0tta6bl4.v1 import governance_pb2 as g
    spec = action_spec(action, target, params)
    req = g.CreateProposalRequest(
        title=title, description=description, action=spec,
        proposer=proposer or os.environ.get("USER", "operator"), duration_s=duration_s, quorum=quorum,
        threshold=threshold, execution_window_s=execution_window_s, request_id=request_id)
    metadata: tuple = ()
    if key_file is not None:
        req.nonce = secrets.token_bytes(32)
        try:
            payload = proposal_signing_payload(
                title=req.title, description=req.description,
                action=Action(kind=ActionKind(action), params=dict(spec.params), target_node=spec.target_node),
                proposer=req.proposer, duration_s=req.duration_s, quorum=req.quorum, threshold=req.threshold,
                execution_window_s=req.execution_window_s, request_id=req.request_id, nonce=req.nonce)
        except GovernanceError as e:
            raise GovError(f"INVALID_ARGUMENT: {e}") from None
        req.signature = load_private(key_file).sign(payload)
    else:
        metadata = locate.admin_metadata(admin_token)
    return call(stub(addr).CreateProposal, req, metadata=metadata)


def vote(addr: str, proposal: str, voter: str, choice: str, tokens: float, key_file: pathlib.Path,
         vote_id: str = ""):
    from x0tta6bl4.governance import vote_signing_payload
    from x0tta6bl4.v1 import governance_pb2 as g
    c = choice.upper()
    if c not in ("YES", "NO", "ABSTAIN"):
        raise GovError(f"--choice must be yes, no or abstain, got {choice!r}")
    key = load_private(key_file)
    nonce = secrets.token_bytes(32)
    sig = key.sign(vote_signing_payload(proposal, voter, c, float(tokens), nonce))
    vote_choice = cast("g.VoteChoice", g.VoteChoice.Value("VOTE_CHOICE_" + c))
    return call(stub(addr).CastVote, g.CastVoteRequest(
        proposal_id=proposal, voter=voter, choice=vote_choice, tokens=float(tokens),
        nonce=nonce, signature=sig, vote_id=vote_id))


def status(addr: str, proposal: str):
    from x0tta6bl4.v1 import governance_pb2 as g
    return call(stub(addr).GetProposal, g.GetProposalRequest(id=proposal))


def list_proposals(addr: str, state: str = "", page_size: int = 50, page_token: str = ""):
    from x0tta6bl4.v1 import governance_pb2 as g
    if state and state.lower() not in STATES:
        raise GovError(f"--state must be one of {', '.join(STATES)}, got {state!r}")
    st = cast("g.ProposalState", g.ProposalState.Value("PROPOSAL_STATE_" + state.upper()) if state else 0)
    return call(stub(addr).ListProposals, g.ListProposalsRequest(state=st, page_size=page_size,
                                                                 page_token=page_token))


def to_dict(msg) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict
    return MessageToDict(msg, preserving_proto_field_name=True)


def proposal_line(p) -> str:
    from x0tta6bl4.v1 import governance_pb2 as g
    state = g.ProposalState.Name(p.state).removeprefix("PROPOSAL_STATE_")
    t = p.tally
    reason = f" ({p.close_reason})" if p.close_reason else ""
    return (f"{p.id}  {state}{reason}  yes={t.yes:g} no={t.no:g} abstain={t.abstain:g} "
            f"turnout={t.turnout:.0%} quorum={p.quorum:g} threshold={p.threshold:g}  {p.title}")


# ---- typer commands --------------------------------------------------------------------------------

def _out(msg, as_json: bool, line: str | None = None) -> None:
    if as_json:
        print(json.dumps(to_dict(msg), indent=2, sort_keys=True))
    else:
        print(line if line is not None else msg)


def _run(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except GovError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


AddrOpt = typer.Option(None, "--addr", help="governance gRPC address (default $X0TTA6BL4_GOV_ADDR or 127.0.0.1:50051)")
JsonOpt = typer.Option(False, "--json", help="print JSON")


@gov_app.command("keygen")
def keygen_cmd(out: pathlib.Path = typer.Option(..., "--out", help="private key file to write (0600)"),
               force: bool = typer.Option(False, "--force", help="overwrite an existing key file")):
    """Make an ML-DSA-65 voter key: OUT (seed, 0600) and OUT.pub (public key)."""
    pub = _run(keygen, out, force)
    print(pub)


@gov_app.command("register")
def register_cmd(voter: str, balance: float = typer.Option(..., "--balance"),
                 key: pathlib.Path | None = typer.Option(
                     None, "--key", help="the voter's key file or .pub file (default: the key keyvault issued "
                                         "to VOTER, a spiffe://<trust-domain>/node/<id> identity)"),
                 admin_token_file: pathlib.Path | None = typer.Option(
                     None, "--admin-token-file",
                     help="ledger admin token (default: $X0TTA6BL4_GOV_ADMIN_TOKEN, "
                          "$X0TTA6BL4_ADMIN_TOKEN_FILE, <data dir>/governance-admin.token)"),
                 addr: str | None = AddrOpt, as_json: bool = JsonOpt):
    """Register a voter identity with a token balance (admin only)."""
    def go():
        token = read_token_file(admin_token_file)
        return register(address(addr), voter, balance, key, token)
    v = _run(go)
    _out(v, as_json, f"{v.voter}  balance={v.balance:g}  key={v.key_id}")


@gov_app.command("balance")
def balance_cmd(voter: str, addr: str | None = AddrOpt, as_json: bool = JsonOpt):
    """A voter's token balance."""
    from x0tta6bl4.v1 import governance_pb2 as g
    v = _run(lambda: call(stub(address(addr)).GetBalance, g.GetBalanceRequest(voter=voter)))
    _out(v, as_json, f"{v.voter}  balance={v.balance:g}  key={v.key_id}")


@gov_app.command("create")
def create_cmd(title: str = typer.Option(..., "--title"), duration: float = typer.Option(..., "--duration",
                                                                                           help="seconds"),
               description: str = typer.Option("", "--description"),
               action: str = typer.Option("config_change", "--action", help=", ".join(ACTIONS)),
               target: str = typer.Option("", "--target", help="target node"),
               param: list[str] = typer.Option([], "--param", help="KEY=VALUE (repeatable)"),
               proposer: str = typer.Option("", "--proposer", help="default: $USER"),
               quorum: float = typer.Option(0.5, "--quorum"), threshold: float = typer.Option(0.5, "--threshold"),
               request_id: str = typer.Option("", "--request-id", help="idempotency key"),
               key: pathlib.Path | None = typer.Option(
                   None, "--key", help="the proposer's voter key or keyvault bundle: sign the proposal "
                                       "(default: use the ledger admin token)"),
               admin_token_file: pathlib.Path | None = typer.Option(
                   None, "--admin-token-file", help="ledger admin token (default: as for register)"),
               addr: str | None = AddrOpt, as_json: bool = JsonOpt):
    """Open a proposal (signed by the proposer's ledger key, or with the admin token)."""
    def go():
        return create(address(addr), title, duration, description=description, action=action, target=target,
                      params=param, proposer=proposer, quorum=quorum, threshold=threshold, request_id=request_id,
                      key_file=key, admin_token=read_token_file(admin_token_file))
    p = _run(go)
    _out(p, as_json, proposal_line(p))


@gov_app.command("vote")
def vote_cmd(proposal: str, voter: str = typer.Option(..., "--voter"),
             choice: str = typer.Option(..., "--choice", help="yes, no or abstain"),
             tokens: float = typer.Option(..., "--tokens"),
             key: pathlib.Path = typer.Option(..., "--key", help="the voter's private key file (meshctl gov keygen)"),
             vote_id: str = typer.Option("", "--vote-id", help="idempotency key (retries apply once)"),
             addr: str | None = AddrOpt, as_json: bool = JsonOpt):
    """Cast a signed vote (weight = sqrt(tokens))."""
    r = _run(vote, address(addr), proposal, voter, choice, tokens, key, vote_id)
    _out(r, as_json, f"vote {r.vote_id} weight={r.weight:g}{' (duplicate)' if r.duplicate else ''}\n"
                     + proposal_line(r.proposal))


@gov_app.command("status")
def status_cmd(proposal: str, addr: str | None = AddrOpt, as_json: bool = JsonOpt):
    """One proposal with its tally."""
    p = _run(status, address(addr), proposal)
    _out(p, as_json, proposal_line(p))


@gov_app.command("list")
def list_cmd(state: str = typer.Option("", "--state", help=", ".join(STATES)),
             page_size: int = typer.Option(50, "--page-size"), page_token: str = typer.Option("", "--page-token"),
             addr: str | None = AddrOpt, as_json: bool = JsonOpt):
    """Proposals (optionally by state), in creation order."""
    r = _run(list_proposals, address(addr), state, page_size, page_token)
    if as_json:
        _out(r, True)
        return
    for p in r.proposals:
        print(proposal_line(p))
    if r.next_page_token:
        print(f"more: --page-token {r.next_page_token}")


@gov_app.command("cancel")
def cancel_cmd(proposal: str, proposer: str = typer.Option("", "--proposer", help="default: $USER"),
               key: pathlib.Path | None = typer.Option(
                   None, "--key", help="the proposer's voter key or keyvault bundle: sign the cancel "
                                       "(default: use the ledger admin token)"),
               admin_token_file: pathlib.Path | None = typer.Option(
                   None, "--admin-token-file", help="ledger admin token (default: as for register)"),
               addr: str | None = AddrOpt, as_json: bool = JsonOpt):
    """Cancel an active proposal (its proposer, proven by a signature or the admin token)."""
    def go():
        token = read_token_file(admin_token_file)
        return cancel(address(addr), proposal, proposer or os.environ.get("USER", "operator"), key, token)
    p = _run(go)
    _out(p, as_json, proposal_line(p))


@gov_app.command("watch")
def watch_cmd(state: str = typer.Option("", "--state", help=", ".join(STATES)), addr: str | None = AddrOpt):
    """Stream proposal changes until interrupted."""
    import grpc

    from x0tta6bl4.v1 import governance_pb2 as g

    def go():
        if state and state.lower() not in STATES:
            raise GovError(f"--state must be one of {', '.join(STATES)}, got {state!r}")
        st = g.ProposalState.Value("PROPOSAL_STATE_" + state.upper()) if state else 0
        try:
            for ev in stub(address(addr)).WatchProposals(g.WatchProposalsRequest(state=st)):
                print(f"{ev.kind:10} {proposal_line(ev.proposal)}", flush=True)
        except grpc.RpcError as e:
            raise GovError(f"{e.code().name}: {e.details()}") from None
    _run(go)
