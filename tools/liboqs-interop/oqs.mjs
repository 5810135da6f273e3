// liboqs (Open Quantum Safe, the @oqs/liboqs-js WebAssembly build) for the cross-check in
// tests/integration/pqc/test_liboqs_interop.py. Reads one JSON request on stdin, writes one JSON answer:
//   {"op": "kem_keygen"}                          -> {"pk", "sk"}
//   {"op": "kem_encaps", "pk"}                    -> {"ct", "ss"}
//   {"op": "kem_decaps", "ct", "sk"}              -> {"ss"}
//   {"op": "sig_keygen"}                          -> {"pk", "sk"}
//   {"op": "sign", "msg", "sk"}                   -> {"sig"}          (ML-DSA-65, empty context)
//   {"op": "verify", "msg", "sig", "pk"}          -> {"ok"}
// Byte strings are hex; keys, ciphertexts and signatures are the raw FIPS 203 / FIPS 204 encodings.
import { createMLKEM768, createMLDSA65 } from '@oqs/liboqs-js';

const hex = (b) => Buffer.from(b).toString('hex');
const bin = (h) => new Uint8Array(Buffer.from(h, 'hex'));

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const req = JSON.parse(Buffer.concat(chunks).toString('utf8'));
let out;
if (req.op.startsWith('kem_')) {
  const kem = await createMLKEM768();
  try {
    if (req.op === 'kem_keygen') {
      const { publicKey, secretKey } = kem.generateKeyPair();
      out = { pk: hex(publicKey), sk: hex(secretKey) };
    } else if (req.op === 'kem_encaps') {
      const { ciphertext, sharedSecret } = kem.encapsulate(bin(req.pk));
      out = { ct: hex(ciphertext), ss: hex(sharedSecret) };
    } else if (req.op === 'kem_decaps') {
      out = { ss: hex(kem.decapsulate(bin(req.ct), bin(req.sk))) };
    }
  } finally {
    kem.destroy();
  }
} else {
  const sig = await createMLDSA65();
  try {
    if (req.op === 'sig_keygen') {
      const { publicKey, secretKey } = sig.generateKeyPair();
      out = { pk: hex(publicKey), sk: hex(secretKey) };
    } else if (req.op === 'sign') {
      out = { sig: hex(sig.sign(bin(req.msg), bin(req.sk))) };
    } else if (req.op === 'verify') {
      out = { ok: sig.verify(bin(req.msg), bin(req.sig), bin(req.pk)) };
    }
  } finally {
    sig.destroy();
  }
}
if (out === undefined) {
  process.stderr.write(`unknown op ${JSON.stringify(req.op)}\n`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(out) + '\n');
