// A governance client in Node.js (docs/integrate.md): over mutual TLS (an SVID from the deployment CA) it
// registers a voter with its own ML-DSA-65 key, opens a proposal, casts a signed vote (pure ML-DSA-65, empty
// context, over the vote payload of x0tta6bl4.governance.signing) and shows that a vote whose signed fields were
// changed is refused. One JSON line per step on stdout.
//
//   X0_GOV_ADDR     127.0.0.1:<port>         X0_SERVER_NAME  governance.<trust domain> (the SVID's DNS name)
//   X0_CA           CA certificate (PEM)     X0_CERT, X0_KEY the client's SVID and key (PEM)
//   X0_ADMIN_TOKEN  the ledger admin token (RegisterVoter, CreateProposal without a proposer signature)
//   X0_VOTER        the voter's name (default spiffe://x0tta6bl4.mesh/voter/node-<random>)
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { ml_dsa65 } from "@noble/post-quantum/ml-dsa.js";
import { env, PROTO_DIR, voteSigningPayload } from "./x0.mjs";

const def = protoLoader.loadSync("x0tta6bl4/v1/governance.proto", {
  includeDirs: [PROTO_DIR], keepCase: true, longs: String, enums: String, defaults: true,
});
const { Governance } = grpc.loadPackageDefinition(def).x0tta6bl4.v1;
const creds = grpc.credentials.createSsl(readFileSync(env("X0_CA")), readFileSync(env("X0_KEY")),
  readFileSync(env("X0_CERT")));
const client = new Governance(env("X0_GOV_ADDR"), creds,
  { "grpc.ssl_target_name_override": env("X0_SERVER_NAME") });
const admin = new grpc.Metadata();
admin.set("authorization", `Bearer ${env("X0_ADMIN_TOKEN")}`);

function call(method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 30_000 },
      (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

function say(step, data) {
  console.log(JSON.stringify({ step, ...data }));
}

const voter = process.env.X0_VOTER || `spiffe://x0tta6bl4.mesh/voter/node-${randomBytes(4).toString("hex")}`;
const { publicKey, secretKey } = ml_dsa65.keygen(randomBytes(32));
const registered = await call("RegisterVoter", { voter, balance: 100, public_key: Buffer.from(publicKey) }, admin);
say("registered", { voter: registered.voter, balance: registered.balance, key_id: registered.key_id });

const proposal = await call("CreateProposal", {
  title: "node client: reroute around n1", description: "cast from Node.js",
  action: { kind: "ACTION_KIND_REROUTE", target_node: "n1" }, proposer: "node-client",
  duration_s: 60, quorum: 0.05, threshold: 0.5,
}, admin);
say("proposed", { proposal_id: proposal.id, state: proposal.state });

const nonce = randomBytes(16);
const tokens = 100;
const signature = ml_dsa65.sign(voteSigningPayload(proposal.id, voter, "YES", tokens, nonce), secretKey);
const vote = { proposal_id: proposal.id, voter, choice: "VOTE_CHOICE_YES", tokens, nonce,
  signature: Buffer.from(signature) };

// the same signature over other tokens: refused (the signature covers every field of the vote)
try {
  await call("CastVote", { ...vote, tokens: 99, vote_id: "node-forged" });
  say("forged", { refused: false });
} catch (e) {
  say("forged", { refused: true, code: grpc.status[e.code], message: e.details });
}

const cast = await call("CastVote", { ...vote, vote_id: `node-${randomBytes(4).toString("hex")}` });
say("voted", { vote_id: cast.vote_id, weight: cast.weight, duplicate: cast.duplicate,
  yes: cast.proposal.tally.yes, state: cast.proposal.state });
client.close();
