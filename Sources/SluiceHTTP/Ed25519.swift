import CCrypto
import Dispatch
import Foundation
public import SluiceCore

/// Ed25519 signature verification from libcrypto (OpenSSL), for SPEC 13's
/// `'signed'` sources. Which key and which message are decided in
/// SluiceCore (`SignatureCheck`); this only asks libcrypto.
public struct Ed25519: SignatureVerifier {
  public init() {}

  public func verify(signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
    guard signature.count == Ed25519Sizes.signature, publicKey.count == Ed25519Sizes.publicKey else { return false }
    guard
      let key = publicKey.withUnsafeBufferPointer({
        EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, $0.baseAddress, $0.count)
      })
    else { return false }
    defer { EVP_PKEY_free(key) }
    guard let context = EVP_MD_CTX_new() else { return false }
    defer { EVP_MD_CTX_free(context) }
    guard EVP_DigestVerifyInit(context, nil, nil, nil, key) == 1 else { return false }
    return signature.withUnsafeBufferPointer { signature in
      message.withUnsafeBufferPointer { message in
        EVP_DigestVerify(context, signature.baseAddress, signature.count, message.baseAddress, message.count) == 1
      }
    }
  }
}

extension Ed25519 {
  /// A batch's signatures on every core: a verification costs about 100 µs,
  /// ten times what the rest of an event costs the daemon. Fewer than 64 run
  /// on the calling thread.
  public func verifyAll(_ items: [SignatureToVerify]) -> [Bool] {
    let workers = min(ProcessInfo.processInfo.activeProcessorCount, items.count / 32)
    guard workers > 1 else {
      return items.map { verify(signature: $0.signature, message: $0.message, publicKey: $0.publicKey) }
    }
    var results = [Bool](repeating: false, count: items.count)
    results.withUnsafeMutableBufferPointer { out in
      let buffer = UncheckedBuffer(out)
      DispatchQueue.concurrentPerform(iterations: workers) { worker in
        var index = worker
        while index < items.count {
          let item = items[index]
          buffer.pointer[index] = verify(signature: item.signature, message: item.message, publicKey: item.publicKey)
          index += workers
        }
      }
    }
    return results
  }

  /// Each worker writes its own indices of one buffer.
  private struct UncheckedBuffer: @unchecked Sendable {
    let pointer: UnsafeMutableBufferPointer<Bool>
    init(_ pointer: UnsafeMutableBufferPointer<Bool>) { self.pointer = pointer }
  }

  /// Signs `message` with the private key whose 32-byte seed is `seed`: for
  /// tests, benchmarks and tools that write signed rows (the daemon only verifies).
  public static func sign(message: [UInt8], seed: [UInt8]) -> [UInt8]? {
    guard seed.count == 32,
      let key = seed.withUnsafeBufferPointer({
        EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nil, $0.baseAddress, $0.count)
      })
    else { return nil }
    defer { EVP_PKEY_free(key) }
    guard let context = EVP_MD_CTX_new() else { return nil }
    defer { EVP_MD_CTX_free(context) }
    guard EVP_DigestSignInit(context, nil, nil, nil, key) == 1 else { return nil }
    var signature = [UInt8](repeating: 0, count: Ed25519Sizes.signature)
    var length = signature.count
    let ok = signature.withUnsafeMutableBufferPointer { out in
      message.withUnsafeBufferPointer {
        EVP_DigestSign(context, out.baseAddress, &length, $0.baseAddress, $0.count) == 1
      }
    }
    return ok && length == Ed25519Sizes.signature ? signature : nil
  }
}
