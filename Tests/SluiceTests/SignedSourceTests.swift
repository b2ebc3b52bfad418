import Foundation
import Sluice
import SluiceCore
import SluiceHTTP
import SluicePostgres
import Testing

/// SPEC 13 `'signed'` against a real server and libcrypto's Ed25519: the
/// shared vectors verify, and each kind of bad signature is `denied` with
/// its reason; keys are judged as of each event's position, across a takeover.
@Suite(.serialized) struct SignedSourceTests {
  struct Vector: Decodable {
    var id: String
    var actor: String
    var scope: String?
    var dedupe_key: String?
    var payload: String
    var message_hex: String
    var signature_hex: String
  }
  struct Vectors: Decodable {
    var private_key_seed_hex: String
    var public_key_hex: String
    var cases: [Vector]
  }
  static func vectors() throws -> Vectors {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent()
    let data = try Data(contentsOf: root.appendingPathComponent("examples/signing/signing-vectors.json"))
    return try JSONDecoder().decode(Vectors.self, from: data)
  }
  static func bytes(_ hex: String) -> [UInt8] { Hex.decode(hex) ?? [] }

  @Test func libcryptoVerifiesTheVectorsAndNothingElse() throws {
    let vectors = try Self.vectors()
    let key = Self.bytes(vectors.public_key_hex)
    for vector in vectors.cases {
      let message = Self.bytes(vector.message_hex)
      var signature = Self.bytes(vector.signature_hex)
      #expect(Ed25519().verify(signature: signature, message: message, publicKey: key), "\(vector.id)")
      #expect(Ed25519.sign(message: message, seed: Self.bytes(vectors.private_key_seed_hex)) == signature)
      signature[10] ^= 1
      #expect(!Ed25519().verify(signature: signature, message: message, publicKey: key), "\(vector.id)")
      #expect(!Ed25519().verify(signature: [], message: message, publicKey: key))
    }
  }

  /// app.relayed: what a relay writes, as one role, for many users; app.seen: what the handler saw.
  static func install(_ db: TestDatabase, _ vectors: Vectors) throws {
    try Migrator.migrate(db.connection, publication: "sluice")
    try db.sql(
      """
      CREATE SCHEMA app;
      CREATE TABLE app.relayed (id text PRIMARY KEY, author text, team text, dedupe text, body text, key_id text,
                                sig bytea, note text);
      CREATE TABLE app.seen (id text PRIMARY KEY, actor text, row jsonb);
      CREATE FUNCTION app.record(e jsonb) RETURNS void LANGUAGE sql
        AS $$ INSERT INTO app.seen VALUES (e->>'id', e->>'actor', e->'row') $$;
      SELECT sluice.add_source('app.relayed', actor_column => 'author', event_type => 'post', scope_column => 'team',
                               dedupe_column => 'dedupe', actor_from => 'signed', signature_column => 'sig',
                               key_column => 'key_id', payload_column => 'body');
      INSERT INTO sluice.handlers VALUES ('post', 'app.record');
      INSERT INTO sluice.permission_rules (event_type, role) VALUES ('post', 'anyone');
      """)
    for (actor, keyID) in [("ann", "k-ann"), ("josé", "k-jose"), ("ben", "k-ben")] {
      try db.sql(
        "INSERT INTO sluice.actor_keys VALUES ($1, $2, decode($3, 'hex'))", [actor, keyID, vectors.public_key_hex])
    }
  }

  /// Inserts a row as the relay writes it; `signature` nil: signed here with the vectors' key.
  static func relay(
    _ db: TestDatabase, _ vectors: Vectors, id: String, actor: String, keyID: String, scope: String? = nil,
    dedupe: String? = nil, payload: String, signature: String? = nil
  ) throws {
    let message = SignedMessage.encode(
      source: "app.relayed", id: id, type: "post", actor: actor, scope: scope, dedupeKey: dedupe,
      payload: Array(payload.utf8))
    let signed =
      signature ?? Hex.encode(Ed25519.sign(message: message, seed: Self.bytes(vectors.private_key_seed_hex)) ?? [])
    try db.sql(
      "INSERT INTO app.relayed VALUES ($1, $2, $3, $4, $5, $6, decode($7, 'hex'), 'unsigned: the relay wrote this')",
      [id, actor, scope, dedupe, payload, keyID, signed])
  }

  /// A batch's signatures are verified on several threads: each answer is
  /// the one a lone verification gives, in its place (seeded tampering).
  @Test func verifyingABatchOnSeveralThreadsAnswersEachInPlace() throws {
    let vectors = try Self.vectors()
    let seed = Self.bytes(vectors.private_key_seed_hex)
    let key = Self.bytes(vectors.public_key_hex)
    var random = SeededGenerator(seed: testSeed(default: 13))
    let items = (0..<1000).map { n -> SignatureToVerify in
      let message = Array("event \(n)".utf8)
      var signature = Ed25519.sign(message: message, seed: seed) ?? []
      if Int.random(in: 0..<7, using: &random) == 0 { signature[Int.random(in: 0..<64, using: &random)] ^= 4 }
      return SignatureToVerify(signature: signature, message: message, publicKey: key, keyID: "k")
    }
    let alone = items.map { Ed25519().verify(signature: $0.signature, message: $0.message, publicKey: $0.publicKey) }
    #expect(Ed25519().verifyAll(items) == alone)
    #expect(alone.contains(false) && alone.contains(true))
    #expect(Ed25519().verifyAll([]) == [])
  }

  @Test func signedRowsAreVerifiedAndEachFailureSaysWhy() throws {
    let vectors = try Self.vectors()
    let db = try TestDatabase("signed")
    try Self.install(db, vectors)
    try createSlot(db)
    let keys = ["ann": "k-ann", "josé": "k-jose"]
    for vector in vectors.cases {
      try Self.relay(
        db, vectors, id: vector.id, actor: vector.actor, keyID: keys[vector.actor] ?? "?", scope: vector.scope,
        dedupe: vector.dedupe_key, payload: vector.payload, signature: vector.signature_hex)
    }
    let first = vectors.cases[0]
    // The payload changed after signing.
    try Self.relay(
      db, vectors, id: "tampered", actor: "ann", keyID: "k-ann", payload: #"{"n": 1000}"#,
      signature: first.signature_hex)
    // Ben's key (the same key bytes, registered for Ben): not Ann's.
    try Self.relay(db, vectors, id: "foreign", actor: "ann", keyID: "k-ben", payload: "{}")
    try Self.relay(db, vectors, id: "unknown", actor: "ann", keyID: "k-nobody", payload: "{}")
    try db.sql(
      """
      INSERT INTO app.relayed VALUES
        ('nosig', 'ann', NULL, NULL, '{}', 'k-ann', NULL, NULL),
        ('huge', 'ann', NULL, NULL, '{}', 'k-ann', decode(repeat('00', 10 << 20), 'hex'), NULL),
        ('longkey', 'ann', NULL, NULL, '{}', repeat('k', 20000), decode(repeat('00', 64), 'hex'), NULL)
      """)
    let daemon = try startDaemon(db)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 9 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let reasons = Dictionary(
      uniqueKeysWithValues: try db.sql("SELECT event_id, status, coalesce(reason, '') FROM sluice.event_log").rows.map {
        ($0[0] ?? "", "\($0[1] ?? ""): \($0[2] ?? "")")
      })
    for vector in vectors.cases { #expect(reasons[vector.id] == "applied: ", "\(vector.id): \(reasons)") }
    #expect(reasons["tampered"] == "denied: signed event denied: the signature does not verify with key 'k-ann'")
    #expect(reasons["foreign"] == "denied: signed event denied: key 'k-ben' is not a key of actor 'ann'")
    #expect(reasons["unknown"] == "denied: signed event denied: unknown key 'k-nobody' for actor 'ann'")
    #expect(reasons["nosig"] == "denied: signed event denied: no signature (column sig is NULL)")
    #expect(
      reasons["huge"] == "denied: signed event denied: malformed signature (10485760 bytes; an Ed25519 signature is 64)"
    )
    #expect(
      reasons["longkey"] == "denied: signed event denied: the key id is 20000 bytes long; the limit is 1024")
    // The handler saw what was signed and the key id: no unsigned column.
    let row = try #require(try db.scalar("SELECT row::text FROM app.seen WHERE id = $1", [first.id]))
    #expect(row.contains("\"key_id\": \"k-ann\"") && row.contains("\"body\""), "\(row)")
    #expect(!row.contains("unsigned") && !row.contains("\"sig\"") && !row.contains("\"note\""), "\(row)")
    #expect(try db.scalar("SELECT actor FROM app.seen WHERE id = '7'") == "josé")
  }

  @Test func keysAreJudgedAsOfEachEventsPositionAcrossATakeover() throws {
    let vectors = try Self.vectors()
    let db = try TestDatabase("signedkeys")
    try Self.install(db, vectors)
    try createSlot(db)
    // Signed, then its key deleted: the event keeps the verdict of its position.
    try Self.relay(db, vectors, id: "before-delete", actor: "ann", keyID: "k-ann", payload: "{}")
    try db.sql("DELETE FROM sluice.actor_keys WHERE key_id = 'k-ann'")
    // A daemon applies Josè's key's deletion and dies; the event after it reaches the next daemon.
    let first = try startDaemon(db)
    try db.sql("DELETE FROM sluice.actor_keys WHERE key_id = 'k-jose'")
    #expect(
      try eventually(30, "the deletion in the mirror") {
        try db.scalar(
          "SELECT count(*) FROM sluice.policy_mirror WHERE slot = $1 AND table_name = 'actor_keys'", [db.slot]) == "1"
      })
    first.signal(SIGKILL)
    _ = first.waitForExit()
    try Self.relay(db, vectors, id: "after-delete", actor: "josé", keyID: "k-jose", payload: "{}")
    try Self.relay(db, vectors, id: "still-valid", actor: "ben", keyID: "k-ben", payload: "{}")
    let second = try startDaemon(db)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    second.signal(SIGTERM)
    #expect(second.waitForExit() == 0)
    #expect(
      try XPFixture.statuses(db) == ["before-delete": "applied", "after-delete": "denied", "still-valid": "applied"])
    #expect(
      try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'after-delete'")
        == "signed event denied: unknown key 'k-jose' for actor 'josé'")
  }

  /// The two client samples (examples/signing: Node's crypto, Python's
  /// cryptography) sign rows that a live daemon verifies and applies.
  @Test func theClientSamplesSignWhatTheDaemonVerifies() throws {
    let vectors = try Self.vectors()
    let db = try TestDatabase("signedsamples")
    try Self.install(db, vectors)
    try createSlot(db)
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().path
    let samples = [
      ("node", ["/usr/bin/node", root + "/examples/signing/sign.mjs"]),
      ("python", ["/usr/bin/python3", root + "/examples/signing/sign.py"]),
    ]
    for (name, command) in samples {
      let vectorsCheck = try capture(command)
      #expect(
        vectorsCheck.status == 0 && vectorsCheck.output.contains("3 passed, 0 failed"), "\(name): \(vectorsCheck)")
      let id = "from-" + name
      let event =
        #"{"source": "app.relayed", "id": "\#(id)", "type": "post", "actor": "josé", "scope": "team-b", "dedupe_key": null, "payload": "{\"n\": 7}"}"#
      let signed = try capture(command + [vectors.private_key_seed_hex, event])
      #expect(signed.status == 0, "\(name): \(signed.output)")
      let signature = try #require(
        signed.output.split(separator: "\"").dropFirst(3).first.map(String.init), "\(name): \(signed.output)")
      try Self.relay(
        db, vectors, id: id, actor: "josé", keyID: "k-jose", scope: "team-b", payload: #"{"n": 7}"#,
        signature: signature)
    }
    let daemon = try startDaemon(db)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 2 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try XPFixture.statuses(db) == ["from-node": "applied", "from-python": "applied"])
  }

  @Test func aSignedSourceRefusesAPayloadThatIsNotWhatWasSigned() throws {
    let db = try TestDatabase("signedjsonb")
    try Migrator.migrate(db.connection, publication: "sluice")
    try db.sql("CREATE TABLE public.r (id text PRIMARY KEY, author text, body jsonb, key_id text, sig bytea, s2 text)")
    let refused = IdentityTests.refusal {
      try db.sql(
        """
        SELECT sluice.add_source('public.r', actor_column => 'author', event_type => 'post', actor_from => 'signed',
                                 signature_column => 'sig', key_column => 'key_id', payload_column => 'body')
        """)
    }
    #expect(refused?.1.contains("payload column body must be json, text or bytea (it is jsonb)") == true)
    let notBytea = IdentityTests.refusal {
      try db.sql(
        """
        SELECT sluice.add_source('public.r', actor_column => 'author', event_type => 'post', actor_from => 'signed',
                                 signature_column => 's2', key_column => 'key_id', payload_column => 'id')
        """)
    }
    #expect(notBytea?.1.contains("signature column s2 must be bytea (it is text)") == true)
  }
}
