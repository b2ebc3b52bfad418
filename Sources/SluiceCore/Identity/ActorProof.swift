/// Where a source's actor comes from (SPEC 13, `sluice.sources.actor_from`).
public enum ActorProof: Sendable, Equatable {
  /// The inserting session's identity, stamped by the table's guard at insert time.
  case session
  /// The column as written: for sources only trusted services write.
  case column
  /// An Ed25519 signature by a key registered for the actor (`sluice.actor_keys`).
  case signed(SignedColumns)

  /// From a `sluice.sources` row's columns; nil for a value the daemon does not know.
  public init?(actorFrom: String?, signature: String?, key: String?, payload: String?) {
    switch actorFrom ?? "column" {
    case "session": self = .session
    case "column": self = .column
    case "signed":
      guard let signature, let key, let payload else { return nil }
      self = .signed(SignedColumns(signatureColumn: signature, keyColumn: key, payloadColumn: payload))
    default: return nil
    }
  }

  public var name: String {
    switch self {
    case .session: "session"
    case .column: "column"
    case .signed: "signed"
    }
  }
}

/// The columns of a `'signed'` source that carry its proof.
public struct SignedColumns: Sendable, Equatable {
  public var signatureColumn: String
  public var keyColumn: String
  public var payloadColumn: String

  public init(signatureColumn: String, keyColumn: String, payloadColumn: String) {
    self.signatureColumn = signatureColumn
    self.keyColumn = keyColumn
    self.payloadColumn = payloadColumn
  }
}

/// Verifies an Ed25519 signature. Pure code decides which key and which
/// message; only an implementation of this touches libcrypto (SluiceHTTP's `Ed25519`).
public protocol SignatureVerifier: Sendable {
  func verify(signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool
  /// Verifies many at once (an implementation may use several threads): one result per item, in order.
  func verifyAll(_ items: [SignatureToVerify]) -> [Bool]
}

extension SignatureVerifier {
  public func verifyAll(_ items: [SignatureToVerify]) -> [Bool] {
    items.map { verify(signature: $0.signature, message: $0.message, publicKey: $0.publicKey) }
  }
}

/// A signature whose key and message are known, and that only libcrypto's
/// answer separates from a proven actor.
public struct SignatureToVerify: Sendable, Equatable {
  public var signature: [UInt8]
  public var message: [UInt8]
  public var publicKey: [UInt8]
  public var keyID: String

  public init(signature: [UInt8], message: [UInt8], publicKey: [UInt8], keyID: String) {
    self.signature = signature
    self.message = message
    self.publicKey = publicKey
    self.keyID = keyID
  }

  /// The reason an event is denied when its signature does not verify.
  public var failure: String { "signed event denied: the signature does not verify with key '\(keyID)'" }
}

/// SPEC 13's signed message: the bytes `sluice-event-v1`, then for each of
/// the source relation, id, type, actor, scope, dedupe key and payload its
/// length as 4 bytes big-endian and its bytes; a NULL is the length
/// `0xFFFFFFFF` and no bytes.
public enum SignedMessage {
  public static let prefix = Array("sluice-event-v1".utf8)

  public static func encode(
    source: String, id: String?, type: String?, actor: String?, scope: String?, dedupeKey: String?,
    payload: [UInt8]?
  ) -> [UInt8] {
    var out = prefix
    func field(_ bytes: [UInt8]?) {
      guard let bytes else {
        out += [0xFF, 0xFF, 0xFF, 0xFF]
        return
      }
      let count = UInt32(bytes.count)
      out += [UInt8(count >> 24), UInt8((count >> 16) & 0xFF), UInt8((count >> 8) & 0xFF), UInt8(count & 0xFF)]
      out += bytes
    }
    for text in [source, id, type, actor, scope, dedupeKey] { field(text.map { Array($0.utf8) }) }
    field(payload)
    return out
  }
}

/// Ed25519 sizes.
public enum Ed25519Sizes {
  public static let publicKey = 32
  public static let signature = 64
}

/// A registered public key (`sluice.actor_keys`).
public struct ActorKey: Sendable, Equatable {
  public var actor: String
  public var keyID: String
  /// nil when the stored value is not 32 bytes of hex (the table's check forbids it).
  public var publicKey: [UInt8]?

  public init(actor: String, keyID: String, publicKey: [UInt8]?) {
    self.actor = actor
    self.keyID = keyID
    self.publicKey = publicKey
  }
}

/// The verdict on a signed row, as of its position: nil when its signature
/// proves its actor, else why the event is denied.
public struct SignatureCheck: Sendable {
  public var verifier: any SignatureVerifier

  public init(verifier: any SignatureVerifier) { self.verifier = verifier }

  /// What a signed row comes to, as of its position.
  public enum Verdict: Sendable, Equatable {
    /// Nothing to verify: no actor (the rules deny it).
    case unclaimed
    case denied(String)
    /// Proven if this signature verifies.
    case verify(SignatureToVerify)
  }

  /// The verdict on one row, verified at once (nil: proven).
  public func denial(
    of event: Event, columns: SignedColumns, keys: (String, String) -> ActorKey?,
    keyIsForeign: (String, String) -> Bool
  ) -> String? {
    switch verdict(of: event, columns: columns, keys: keys, keyIsForeign: keyIsForeign) {
    case .unclaimed: return nil
    case .denied(let reason): return reason
    case .verify(let item): return verifier.verifyAll([item])[0] ? nil : item.failure
    }
  }

  /// Everything but the signature arithmetic: which key (as of the event's
  /// position), which message. The arithmetic can then run for a whole
  /// batch at once, on several threads (`SignatureVerifier.verifyAll`).
  public func verdict(
    of event: Event, columns: SignedColumns, keys: (String, String) -> ActorKey?,
    keyIsForeign: (String, String) -> Bool
  ) -> Verdict {
    switch checkedSignature(of: event, columns: columns, keys: keys, keyIsForeign: keyIsForeign) {
    case .none: return .unclaimed
    case .some(.failure(let denied)): return .denied(denied.reason)
    case .some(.success(let item)): return .verify(item)
    }
  }

  private struct Denied: Error { var reason: String }

  private func checkedSignature(
    of event: Event, columns: SignedColumns, keys: (String, String) -> ActorKey?,
    keyIsForeign: (String, String) -> Bool
  ) -> Result<SignatureToVerify, Denied>? {
    func denial(_ reason: String) -> Result<SignatureToVerify, Denied>? { .failure(Denied(reason: reason)) }
    let row = event.row
    guard let actor = event.actor, !actor.isEmpty else { return nil }  // the rules deny an empty actor
    let signature: [UInt8]
    switch row[columns.signatureColumn] {
    case .none, .some(.null):
      return denial("signed event denied: no signature (column \(columns.signatureColumn) is NULL)")
    case .some(.bytes(let bytes)):
      guard bytes.count == Ed25519Sizes.signature else {
        return denial("signed event denied: malformed signature (\(bytes.count) bytes; an Ed25519 signature is 64)")
      }
      signature = bytes
    case .some:
      return denial("signed event denied: malformed signature (column \(columns.signatureColumn) is not bytea)")
    }
    guard let keyID = row.text(columns.keyColumn), !keyID.isEmpty else {
      return denial("signed event denied: no key id (column \(columns.keyColumn) is NULL or empty)")
    }
    if keyID.utf8.count > EventLimits.maxFieldBytes {
      return denial(
        "signed event denied: the key id is \(keyID.utf8.count) bytes long; the limit is \(EventLimits.maxFieldBytes)")
    }
    guard let key = keys(actor, keyID) else {
      if keyIsForeign(actor, keyID) {
        return denial("signed event denied: key '\(keyID)' is not a key of actor '\(actor)'")
      }
      return denial("signed event denied: unknown key '\(keyID)' for actor '\(actor)'")
    }
    guard let publicKey = key.publicKey, publicKey.count == Ed25519Sizes.publicKey else {
      return denial("signed event denied: key '\(keyID)' is not a 32-byte Ed25519 public key")
    }
    let payload: [UInt8]?
    switch row[columns.payloadColumn] {
    case .none, .some(.null): payload = nil
    case .some(.bytes(let bytes)): payload = bytes
    case .some(.text(let text)), .some(.json(let text)): payload = Array(text.utf8)
    case .some(let other): payload = other.textValue.map { Array($0.utf8) }
    }
    let message = SignedMessage.encode(
      source: event.source, id: event.idIsSynthetic ? nil : event.id, type: event.type, actor: actor,
      scope: event.scope, dedupeKey: event.dedupeKey, payload: payload)
    return .success(SignatureToVerify(signature: signature, message: message, publicKey: publicKey, keyID: keyID))
  }
}

extension SourceMapping {
  /// What a handler of a signed source sees in `row`: what was signed, and the key id.
  public func signedView(of row: Row) -> Row {
    guard case .signed(let signed) = actorFrom else { return row }
    let kept = Set(
      [idColumn, actorColumn, signed.payloadColumn, signed.keyColumn]
        + [eventTypeColumn, scopeColumn, dedupeColumn].compactMap { $0 })
    return Row(row.columns.filter { kept.contains($0.0) })
  }
}
