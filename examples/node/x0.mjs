// Shared helpers of the Node.js examples (docs/integrate.md): the protos, the audit hash rule, the vote payload.
import { createHash } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
// The protos import each other as "x0tta6bl4/v1/<file>.proto": proto/ is the include path.
export const PROTO_DIR = process.env.X0_PROTO_DIR || path.resolve(HERE, "..", "..", "proto");

/** Load the protos with proto/ as the include path (field names as written in the .proto files). */
export async function loadProtos(files = ["x0tta6bl4/v1/events.proto", "x0tta6bl4/v1/governance.proto"]) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(PROTO_DIR, target);
  await root.load(files, { keepCase: true });
  return root;
}

/** The value of a required environment variable, or exit naming it. */
export function env(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${path.basename(process.argv[1])}: set ${name}`);
    process.exit(64);
  }
  return v;
}

// ---- the audit chain (docs/audit-events.md) -----------------------------------------------------------------
function varint(buf, i) {
  let value = 0n;
  let shift = 0n;
  for (;;) {
    const b = buf[i++];
    value |= BigInt(b & 0x7f) << shift;
    shift += 7n;
    if (!(b & 0x80)) return [value, i];
  }
}

/** The message's bytes without the top-level records of the given field numbers (wire level, no re-encoding). */
export function stripFields(buf, drop) {
  const out = [];
  let i = 0;
  while (i < buf.length) {
    const start = i;
    let tag;
    [tag, i] = varint(buf, i);
    const wire = Number(tag & 7n);
    if (wire === 0) [, i] = varint(buf, i);
    else if (wire === 2) {
      let n;
      [n, i] = varint(buf, i);
      i += Number(n);
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else throw new Error(`unsupported wire type ${wire}`);
    if (!drop.has(Number(tag >> 3n))) out.push(buf.subarray(start, i));
  }
  return Buffer.concat(out);
}

/** SHA-256 of an AuditEvent's canonical bytes: the message as published (deterministic encoding) without
 * hash, signature, key_id and public_key (fields 9-12). */
export function auditHash(raw) {
  return createHash("sha256").update(stripFields(raw, new Set([9, 10, 11, 12]))).digest();
}

/** A detail value as its type: a string detail is the string, anything else JSON (docs/audit-events.md). */
export function detailValue(text, type) {
  return type === "string" ? text : JSON.parse(text);
}

// ---- what a voter signs (x0tta6bl4.governance.signing.vote_signing_payload) ---------------------------------
function field(bytes) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(bytes.length);
  return Buffer.concat([len, Buffer.from(bytes)]);
}

export function voteSigningPayload(proposalId, voter, choice, tokens, nonce) {
  const t = Buffer.alloc(8);
  t.writeDoubleBE(Number(tokens));
  return Buffer.concat([field(Buffer.from("x0tta6bl4/vote/v1")), field(Buffer.from(proposalId, "utf8")),
    field(Buffer.from(voter, "utf8")), field(Buffer.from(choice, "ascii")), field(t), field(nonce)]);
}
