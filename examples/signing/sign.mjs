// Signs a Sluice event (SPEC 13 'signed') with Node's crypto, as a browser's
// WebCrypto would (Ed25519), and checks itself against signing-vectors.json.
//   node examples/signing/sign.mjs                  check the vectors
//   node examples/signing/sign.mjs SEEDHEX JSON     print {"signature_hex"} for an event
import { createPrivateKey, sign } from "node:crypto";
import { readFileSync } from "node:fs";

// The message: "sluice-event-v1", then each field as a 4-byte big-endian
// length and its UTF-8 bytes; NULL is ffffffff and no bytes.
export function message(e) {
  const parts = [Buffer.from("sluice-event-v1")];
  for (const value of [e.source, e.id, e.type, e.actor, e.scope, e.dedupe_key, e.payload]) {
    const length = Buffer.alloc(4);
    if (value === null || value === undefined) {
      length.writeUInt32BE(0xffffffff);
      parts.push(length);
    } else {
      const bytes = Buffer.from(value, "utf8");
      length.writeUInt32BE(bytes.length);
      parts.push(length, bytes);
    }
  }
  return Buffer.concat(parts);
}

// An Ed25519 private key from its 32-byte seed (PKCS#8 DER: a fixed prefix, then the seed).
export function privateKey(seedHex) {
  const prefix = Buffer.from("302e020100300506032b657004220420", "hex");
  return createPrivateKey({ key: Buffer.concat([prefix, Buffer.from(seedHex, "hex")]), format: "der", type: "pkcs8" });
}

export function signEvent(seedHex, event) {
  return sign(null, message(event), privateKey(seedHex)).toString("hex");
}

if (process.argv.length === 4) {
  console.log(JSON.stringify({ signature_hex: signEvent(process.argv[2], JSON.parse(process.argv[3])) }));
} else {
  const vectors = JSON.parse(readFileSync(new URL("./signing-vectors.json", import.meta.url)));
  let failed = 0;
  for (const c of vectors.cases) {
    const ok = message(c).toString("hex") === c.message_hex && signEvent(vectors.private_key_seed_hex, c) === c.signature_hex;
    if (!ok) failed++;
    console.log(`${ok ? "ok  " : "FAIL"} ${c.case}`);
  }
  console.log(`${vectors.cases.length - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}
