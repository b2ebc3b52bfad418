import Foundation
import Testing

@testable import SluiceCore

/// SPEC 13 `'signed'`: the message bytes (against the shared vectors), and
/// the verdict on each row as of its position, with no server. The real
/// Ed25519 verification is tested in SluiceTests (it needs libcrypto).
@Suite struct SignedEventTests {
  struct Vector: Decodable {
    var source: String
    var id: String
    var type: String
    var actor: String
    var scope: String?
    var dedupe_key: String?
    var payload: String
    var message_hex: String
    var signature_hex: String
  }
  struct Vectors: Decodable {
    var public_key_hex: String
    var cases: [Vector]
  }

  /// examples/signing/signing-vectors.json, a copy of the SPEC's (DocsTests checks it matches).
  static func vectors() throws -> Vectors {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent()
    let data = try Data(contentsOf: root.appendingPathComponent("examples/signing/signing-vectors.json"))
    return try JSONDecoder().decode(Vectors.self, from: data)
  }

  @Test func messagesAreTheVectors() throws {
    let vectors = try Self.vectors()
    #expect(vectors.cases.count == 3)
    for vector in vectors.cases {
      let message = SignedMessage.encode(
        source: vector.source, id: vector.id, type: vector.type, actor: vector.actor, scope: vector.scope,
        dedupeKey: vector.dedupe_key, payload: Array(vector.payload.utf8))
      #expect(Hex.encode(message) == vector.message_hex, "\(vector.id)")
    }
  }

  /// A stand-in for Ed25519: the "signature" of a message is a 64-byte fold of it and the key.
  struct FoldVerifier: SignatureVerifier {
    static func sign(_ message: [UInt8], key: [UInt8]) -> [UInt8] {
      var out = [UInt8](repeating: 0, count: 64)
      for (index, byte) in message.enumerated() { out[index % 64] = out[index % 64] &* 31 &+ byte }
      for (index, byte) in key.enumerated() { out[index] ^= byte }
      return out
    }
    func verify(signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
      signature == Self.sign(message, key: publicKey)
    }
  }

  static let annKey = [UInt8](repeating: 1, count: 32)
  static let benKey = [UInt8](repeating: 2, count: 32)
  static let source: Policy.Change = .upsert(
    .sources, key: "app.relayed",
    row: [
      "relation": "app.relayed", "event_type": "post", "actor_column": "author", "scope_column": "team",
      "dedupe_column": "key", "actor_from": "signed", "signature_column": "sig", "key_column": "key_id",
      "payload_column": "body",
    ])
  static func key(_ actor: String, _ id: String, _ bytes: [UInt8]) -> Policy.Change {
    .upsert(
      .actorKeys, key: Policy.Table.actorKeys.key { ["actor": actor, "key_id": id][$0] } ?? "",
      row: ["actor": actor, "key_id": id, "public_key": "\\x" + Hex.encode(bytes)])
  }
  static func deleteKey(_ actor: String, _ id: String) -> Policy.Change {
    .delete(.actorKeys, key: Policy.Table.actorKeys.key { ["actor": actor, "key_id": id][$0] } ?? "")
  }
  static let rule: Policy.Change = .upsert(
    .permissionRules, key: "1", row: ["id": "1", "event_type": "post", "role": "anyone"])

  static func policy() -> Policy {
    var policy = Policy()
    for change in [source, rule, key("ann", "laptop", annKey), key("ben", "phone", benKey)] { policy.apply(change) }
    return policy
  }

  /// A row of app.relayed; `signature` nil: signed correctly with `signer`'s key.
  static func row(
    _ id: String, author: String = "ann", keyID: ColumnValue = .text("laptop"), body: String = #"{"n": 1}"#,
    signedBody: String? = nil, signer: [UInt8] = annKey, signature: ColumnValue? = nil
  ) -> Row {
    let message = SignedMessage.encode(
      source: "app.relayed", id: id, type: "post", actor: author, scope: "team-a", dedupeKey: nil,
      payload: Array((signedBody ?? body).utf8))
    return Row([
      ("id", .text(id)), ("author", .text(author)), ("team", .text("team-a")), ("key", .null),
      ("body", .json(body)), ("key_id", keyID),
      ("sig", signature ?? .bytes(FoldVerifier.sign(message, key: signer))), ("unsigned_note", .text("relay says hi")),
    ])
  }

  static func decisions(_ items: [StreamItem], policy: Policy = policy()) -> [Candidate] {
    var planner = StreamPlanner(policy: policy, catalog: .init(), signatures: SignatureCheck(verifier: FoldVerifier()))
    return planner.plan(items).candidates
  }
  static func insert(_ row: Row) -> StreamItem { .insert(relation: "app.relayed", row: row, lsn: LSN(1)) }
  static let begin = StreamItem.begin(xid: 7, commitLSN: LSN(10), commitTime: 0)
  static let commit = StreamItem.commit(endLSN: LSN(20), commitLSN: LSN(19), commitTime: 0)

  /// Each case: the row, and the denial it must get (nil: allowed).
  static let cases: [String: (Row, String?)] = [
    "good": (row("1"), nil),
    "tampered payload": (row("2", body: #"{"n": 1000}"#, signedBody: #"{"n": 1}"#), "the signature does not verify"),
    "another actor's key": (
      row("3", keyID: .text("phone"), signer: benKey), "key 'phone' is not a key of actor 'ann'"
    ),
    "unknown key": (row("4", keyID: .text("tablet")), "unknown key 'tablet' for actor 'ann'"),
    "no signature": (row("5", signature: .null), "no signature"),
    "10 MB signature": (
      row("6", signature: .bytes([UInt8](repeating: 7, count: 10 << 20))), "malformed signature (10485760 bytes"
    ),
    "signature not bytea": (row("7", signature: .text("abc")), "is not bytea"),
    "20 kB key id": (row("8", keyID: .text(String(repeating: "k", count: 20_000))), "the key id is 20000 bytes long"),
    "no key id": (row("9", keyID: .null), "no key id"),
    "signed by ann, claims ben": (
      row("10", author: "ben", keyID: .text("laptop")), "key 'laptop' is not a key of actor 'ben'"
    ),
  ]

  @Test(arguments: cases.keys.sorted())
  func verdict(_ name: String) throws {
    let (row, denial) = try #require(Self.cases[name])
    let candidates = Self.decisions([Self.begin, Self.insert(row), Self.commit])
    #expect(candidates.count == 1)
    switch candidates.first?.decision {
    case .allowed: #expect(denial == nil, "\(name): allowed")
    case .denied(let reason):
      #expect(denial.map { reason.contains($0) } == true, "\(name): \(reason)")
      #expect(reason.hasPrefix("signed event denied"), "\(name)")
    default: Issue.record("\(name): \(String(describing: candidates.first?.decision))")
    }
  }

  @Test func aHandlerSeesOnlyWhatWasSigned() {
    let candidates = Self.decisions([Self.begin, Self.insert(Self.row("1")), Self.commit])
    #expect(candidates.first?.event.row.columns.map(\.0) == ["id", "author", "team", "key", "body", "key_id"])
    #expect(candidates.first?.event.row.text("unsigned_note") == nil)
  }

  @Test func keysAreJudgedAsOfTheEventsPosition() {
    // Deleted before the event (an earlier transaction): no longer verifies.
    let before = Self.decisions([
      Self.begin, .configChange(Self.deleteKey("ann", "laptop")), Self.commit,
      .begin(xid: 8, commitLSN: LSN(30), commitTime: 0), Self.insert(Self.row("1")),
      .commit(endLSN: LSN(40), commitLSN: LSN(39), commitTime: 0),
    ])
    #expect(before.map(\.decision) == [.denied("signed event denied: unknown key 'laptop' for actor 'ann'")])
    // Deleted after it: the event keeps its verdict.
    let after = Self.decisions([
      Self.begin, Self.insert(Self.row("1")), Self.commit,
      .begin(xid: 8, commitLSN: LSN(30), commitTime: 0), .configChange(Self.deleteKey("ann", "laptop")),
      .commit(endLSN: LSN(40), commitLSN: LSN(39), commitTime: 0),
    ])
    #expect(after.map(\.decision) == [.allowed(nil)])
    // Earlier in the event's own transaction counts too.
    let sameTransaction = Self.decisions([
      Self.begin, .configChange(Self.deleteKey("ann", "laptop")), Self.insert(Self.row("1")), Self.commit,
    ])
    #expect(sameTransaction.map(\.decision) == [.denied("signed event denied: unknown key 'laptop' for actor 'ann'")])
  }

  @Test func withoutAVerifierSignedEventsAreDenied() {
    var planner = StreamPlanner(policy: Self.policy(), catalog: .init())
    let plan = planner.plan([Self.begin, Self.insert(Self.row("1")), Self.commit])
    #expect(plan.candidates.map(\.decision) == [.denied("signed event denied: this daemon cannot verify signatures")])
  }

  @Test func aRowFromBeforeTheGuardIsDeniedUnlessTrusted() {
    var policy = Policy()
    let session: [String: String?] = [
      "relation": "g.actions", "event_type": "award", "actor_column": "user_id", "actor_from": "session",
    ]
    policy.apply(.upsert(.sources, key: "g.actions", row: session))
    policy.apply(Self.rule)
    policy.apply(.upsert(.permissionRules, key: "2", row: ["id": "2", "event_type": "award", "role": "anyone"]))
    let row = Row([("id", .text("1")), ("user_id", .text("ben"))])
    let planner = StreamPlanner(policy: policy, catalog: .init())
    #expect(
      planner.plan(rows: [.init(relation: "g.actions", row: row, beforeGuard: true)]).candidates.map(\.decision) == [
        .denied("event type 'award' denied: written before the source's guard (its actor was never proven)")
      ])
    #expect(planner.plan(rows: [.init(relation: "g.actions", row: row)]).candidates.map(\.decision) == [.allowed(nil)])
    var trusting = session
    trusting["existing"] = "trust"
    policy.apply(.upsert(.sources, key: "g.actions", row: trusting))
    let trusted = StreamPlanner(policy: policy, catalog: .init())
    #expect(
      trusted.plan(rows: [.init(relation: "g.actions", row: row, beforeGuard: true)]).candidates.map(\.decision) == [
        .allowed(nil)
      ])
  }

  @Test func actorKeyRowKeysAreUnambiguous() {
    let key = { (actor: String, id: String) in Policy.Table.actorKeys.key { ["actor": actor, "key_id": id][$0] } }
    #expect(key("ann", "laptop") == "3:annlaptop")
    #expect(key("an", "nlaptop") != key("ann", "laptop"))
    #expect(key("josé", "k") == "5:josék")
    #expect(
      Policy.Table.actorKeys.keySQL("t")
        == "octet_length(t.actor::text)::text || ':' || t.actor::text || t.key_id::text")
  }
}
