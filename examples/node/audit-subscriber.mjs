// An audit subscriber in Node.js (docs/integrate.md): reads stream AUDIT as the audit-reader identity (TLS, nkey,
// its own inbox prefix), and checks every event: its hash (SHA-256 of the canonical bytes), its signature (pure
// ML-DSA-65, empty context, by the service's key from the trust bundle, role "audit") and its link to the
// previous event of its chain. One JSON line per event on stdout; it stops when it has seen an event of type
// X0_WANT_TYPE (and subject X0_WANT_SUBJECT, when set), or after X0_TIMEOUT_S seconds.
//
//   X0_NATS_URL    tls://127.0.0.1:4222            X0_NATS_CA   the deployment CA (secrets ca/ca.pem)
//   X0_NKEY_FILE   secrets creds/audit-reader.nk   X0_TRUST     the trust bundle (secrets trust.json)
//   X0_IDENTITY    audit-reader (inbox prefix _INBOX_<identity>)
// Exit status: 0 the wanted event was seen and every event verified, 1 not seen in time, 2 an event failed.
import { readFileSync } from "node:fs";
import { ml_dsa65 } from "@noble/post-quantum/ml-dsa.js";
import { connect, nkeyAuthenticator } from "nats";
import { auditHash, env, loadProtos } from "./x0.mjs";

const identity = process.env.X0_IDENTITY || "audit-reader";
const wantType = process.env.X0_WANT_TYPE || "";
const wantSubject = process.env.X0_WANT_SUBJECT || "";
const timeoutS = Number(process.env.X0_TIMEOUT_S || "60");

const trust = JSON.parse(readFileSync(env("X0_TRUST"), "utf8"));
const auditKeys = new Map(trust.keys.filter((k) => k.roles.includes("audit"))
  .map((k) => [k.key_id, { owner: k.owner, publicKey: Buffer.from(k.ml_dsa_65, "hex") }]));

const root = await loadProtos(["x0tta6bl4/v1/events.proto"]);
const AuditEvent = root.lookupType("x0tta6bl4.v1.AuditEvent");

const nc = await connect({
  servers: env("X0_NATS_URL"),
  tls: { caFile: env("X0_NATS_CA") },
  authenticator: nkeyAuthenticator(new TextEncoder().encode(readFileSync(env("X0_NKEY_FILE"), "utf8").trim())),
  inboxPrefix: `_INBOX_${identity}`,
  name: "node-audit-subscriber",
});

const heads = new Map();          // chain id -> { seq, hash } of the last event seen
let failed = 0;
let found = false;

function check(raw) {
  const ev = AuditEvent.decode(raw);
  const hash = auditHash(raw);
  const hashOk = hash.equals(Buffer.from(ev.hash));
  let sigOk = false;
  let why = "";
  const key = auditKeys.get(ev.key_id);
  if (ev.service === "edge") why = "edge chains are signed by node keys (keyvault records): not checked here";
  else if (!key) why = `key ${ev.key_id} is not in the trust bundle`;
  else if (key.owner !== ev.service) why = `key ${ev.key_id} belongs to ${key.owner}, not ${ev.service}`;
  else sigOk = ml_dsa65.verify(ev.signature, ev.hash, key.publicKey);   // pure ML-DSA-65, empty context
  const head = heads.get(ev.chain_id);
  const seq = Number(ev.chain_seq);
  const linkOk = head ? seq === head.seq + 1 && Buffer.from(ev.prev_hash).equals(head.hash)
    : seq === 1 ? Buffer.from(ev.prev_hash).equals(Buffer.alloc(32)) : true;  // a chain seen from its middle
  heads.set(ev.chain_id, { seq, hash: Buffer.from(ev.hash) });
  const ok = hashOk && linkOk && (sigOk || ev.service === "edge");
  if (!ok) failed++;
  // a tampered copy must fail: one detail changed -> another hash
  const tampered = AuditEvent.toObject(ev);
  tampered.details = { ...tampered.details, tampered: "true" };
  const tamperDetected = !auditHash(Buffer.from(AuditEvent.encode(AuditEvent.fromObject(tampered)).finish()))
    .equals(Buffer.from(ev.hash));
  console.log(JSON.stringify({
    service: ev.service, event_type: ev.event_type, subject_id: ev.subject_id, chain_id: ev.chain_id, seq,
    hash_ok: hashOk, signature_ok: sigOk, link_ok: linkOk, tamper_detected: tamperDetected, why,
    details: ev.details,
  }));
  if (ok && ev.event_type === wantType && (!wantSubject || ev.subject_id === wantSubject)) found = true;
}

const js = nc.jetstream();
const consumer = await js.consumers.get("AUDIT");        // an ordered consumer: every event, in stream order
const messages = await consumer.consume();
const timer = setTimeout(() => messages.stop(), timeoutS * 1000);
for await (const m of messages) {
  check(Buffer.from(m.data));
  if (found) break;
}
clearTimeout(timer);
await nc.close();
console.log(JSON.stringify({ summary: true, found, failed, chains: heads.size }));
process.exit(failed ? 2 : found ? 0 : 1);
