/// One delivery as it goes on the wire: the Standard Webhooks 1.0 headers
/// (SPEC section 9) and the body. The signature is computed by the caller
/// (HMAC-SHA256 from libcrypto) over `signedContent`.
public struct WebhookMessage: Sendable, Equatable {
  /// `webhook-id`: `<source>/<event_id>/<n>`, the same on every attempt.
  public var id: String
  /// `webhook-timestamp`: unix seconds of this attempt.
  public var timestamp: Int64
  /// The body, byte for byte as signed and sent.
  public var body: String
  public var endpoint: String
  public var eventType: String
  public var eventID: String

  public init(id: String, timestamp: Int64, body: String, endpoint: String, eventType: String, eventID: String) {
    self.id = id
    self.timestamp = timestamp
    self.body = body
    self.endpoint = endpoint
    self.eventType = eventType
    self.eventID = eventID
  }

  /// The id is printable ASCII without spaces: a header carries it unchanged.
  public var hasSendableID: Bool { !id.isEmpty && id.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F } }

  /// `<webhook-id>.<webhook-timestamp>.<body>`: what the signature covers.
  public var signedContent: [UInt8] { Array("\(id).\(timestamp).".utf8) + Array(body.utf8) }

  /// The request headers; `signature` is the base64 HMAC, when the endpoint has a secret.
  public func headers(signature: String?) -> [(name: String, value: String)] {
    var headers: [(name: String, value: String)] = [
      ("Content-Type", "application/json"),
      ("webhook-id", id),
      ("webhook-timestamp", "\(timestamp)"),
    ]
    if let signature { headers.append(("webhook-signature", "v1,\(signature)")) }
    headers += [
      ("Idempotency-Key", id),
      ("Sluice-Endpoint", Self.headerValue(endpoint)),
      ("Sluice-Event-Type", Self.headerValue(eventType)),
      ("Sluice-Event-Id", Self.headerValue(eventID)),
    ]
    return headers
  }

  /// Event types and ids are a client's text: in a header, every byte
  /// outside printable ASCII (and `%`, and space) is percent-encoded, so a
  /// CR or LF can never end the header or start another. `webhook-id` is
  /// already printable ASCII (`sluice.outbox_key`), so it is sent as signed
  /// (`hasSendableID` checks).
  public static func headerValue(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    let hex = Array("0123456789ABCDEF".utf8)
    for byte in text.utf8 {
      if byte > 0x20, byte < 0x7F, byte != UInt8(ascii: "%") {
        out.unicodeScalars.append(Unicode.Scalar(byte))
      } else {
        out.unicodeScalars.append("%")
        out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte >> 4)]))
        out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte & 0xF)]))
      }
    }
    return out
  }
}
