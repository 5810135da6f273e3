#!/usr/bin/env python3
"""dao-vote.py: the spec's DAO client (a thin gRPC client of the governance service).

    dao-vote.py --action create --title "reroute n3" --duration 300 [--description ...] [--quorum 0.5]
                                [--kind reroute --target n3 --param KEY=VALUE ...]
                                [--proposer ID --key FILE]   (signed by that ledger identity; else the admin token)
    dao-vote.py --action topology_update --title "Auto-heal: reroute around node-3" --duration 300
                                --param link=n2,n3 --param state=down
                (the spec's form: --action naming a proposal kind creates a proposal of that kind)
    dao-vote.py --action config_change --title "slower HELLOs" --duration 300 --param hello_interval=0.3
    dao-vote.py --action vote --proposal ID --voter ID --choice yes --tokens 100 --key FILE
    dao-vote.py --action status --proposal ID
    dao-vote.py --action list [--state active]
    dao-vote.py --action keygen --key FILE            (ML-DSA-65 voter key; FILE.pub is the public key)
    dao-vote.py --action register --voter ID --balance 100 [--key FILE]
                                (admin: token from $X0TTA6BL4_GOV_ADMIN_TOKEN or <data dir>/governance-admin.token;
                                 without --key the key keyvault issued to the identity ID)

Address: --addr, $X0TTA6BL4_GOV_ADDR or 127.0.0.1:50051. Exit 1 with one line on any error.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "libs"))

from x0tta6bl4.cli import gov


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="vote on mesh changes (x0tta6bl4 governance)")
    ops = ("create", "vote", "status", "list", "keygen", "register")
    ap.add_argument("--action", required=True, choices=ops + gov.ACTIONS,
                    help="what to do, or a proposal kind (" + ", ".join(gov.ACTIONS) + "): create a proposal of "
                         "that kind")
    ap.add_argument("--addr", default=None)
    ap.add_argument("--title")
    ap.add_argument("--description", default="")
    ap.add_argument("--duration", type=float, help="voting period in seconds")
    ap.add_argument("--kind", default="config_change", help="the proposal's action: " + ", ".join(gov.ACTIONS))
    ap.add_argument("--target", default="", help="target node of the action")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter of the proposal's action (repeatable): topology_update link=A,B state=down|up; "
                         "config_change hello_interval=S miss_count=N")
    ap.add_argument("--quorum", type=float, default=0.5)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--proposer", default="")
    ap.add_argument("--proposal")
    ap.add_argument("--voter")
    ap.add_argument("--choice", choices=("yes", "no", "abstain", "YES", "NO", "ABSTAIN"))
    ap.add_argument("--tokens", type=float)
    ap.add_argument("--balance", type=float)
    ap.add_argument("--key", type=pathlib.Path)
    ap.add_argument("--admin-token-file", type=pathlib.Path, default=None)
    ap.add_argument("--vote-id", default="")
    ap.add_argument("--state", default="")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.action in gov.ACTIONS:          # the spec's `--action topology_update`: create a proposal of that kind
        a.kind, a.action = a.action, "create"

    def need(*names: str) -> None:
        missing = [f"--{n.replace('_', '-')}" for n in names if getattr(a, n) in (None, "")]
        if missing:
            ap.error(f"--action {a.action} needs {', '.join(missing)}")

    addr = gov.address(a.addr)
    try:
        if a.action == "create":
            need("title", "duration")
            out = gov.create(addr, a.title, a.duration, description=a.description, action=a.kind, target=a.target,
                             params=a.param, proposer=a.proposer, quorum=a.quorum, threshold=a.threshold,
                             key_file=a.key,
                             admin_token=gov.read_token_file(a.admin_token_file))
            line = gov.proposal_line(out)
        elif a.action == "vote":
            need("proposal", "voter", "choice", "tokens", "key")
            out = gov.vote(addr, a.proposal, a.voter, a.choice, a.tokens, a.key, a.vote_id)
            line = f"vote {out.vote_id} weight={out.weight:g}\n" + gov.proposal_line(out.proposal)
        elif a.action == "status":
            need("proposal")
            out = gov.status(addr, a.proposal)
            line = gov.proposal_line(out)
        elif a.action == "list":
            out = gov.list_proposals(addr, a.state, 1000)
            line = "\n".join(gov.proposal_line(p) for p in out.proposals)
        elif a.action == "keygen":
            need("key")
            print(gov.keygen(a.key))
            return 0
        else:  # register
            need("voter", "balance")
            out = gov.register(addr, a.voter, a.balance, a.key, gov.read_token_file(a.admin_token_file))
            line = f"{out.voter}  balance={out.balance:g}  key={out.key_id}"
    except gov.GovError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(gov.to_dict(out), indent=2, sort_keys=True) if a.json else line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
