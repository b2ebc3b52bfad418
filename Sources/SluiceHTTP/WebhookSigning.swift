import CCrypto
import Foundation
public import SluiceCore

/// HMAC-SHA256 from libcrypto (OpenSSL), never written by hand.
public enum HMACSHA256 {
  public static func authenticationCode(key: [UInt8], message: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
    var length: UInt32 = 0
    let ok = key.withUnsafeBufferPointer { key in
      message.withUnsafeBufferPointer { message in
        HMAC(EVP_sha256(), key.baseAddress, Int32(key.count), message.baseAddress, message.count, &out, &length) != nil
      }
    }
    precondition(ok, "HMAC-SHA256 failed")
    return Array(out.prefix(Int(length)))
  }
}

/// A Standard Webhooks secret: `whsec_` and the base64 of a 24 to 64 byte key
/// (the same rule as the `sluice.endpoints` check).
public struct WebhookSecret: Sendable {
  public let key: [UInt8]

  public init?(_ text: String) {
    guard text.hasPrefix("whsec_"), let key = Data(base64Encoded: String(text.dropFirst(6))),
      (24...64).contains(key.count)
    else { return nil }
    self.key = Array(key)
  }

  /// The base64 signature of a message (`webhook-signature: v1,<this>`).
  public func signature(of message: WebhookMessage) -> String {
    Data(HMACSHA256.authenticationCode(key: key, message: message.signedContent)).base64EncodedString()
  }
}
