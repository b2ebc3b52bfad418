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
    guard let key = Self.keys.key(publicKey) else { return false }
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

/// libcrypto's keys, made once per public key: OpenSSL 3 imports a raw key
/// through its provider (a fetch, a lock), which cost more than the
/// verification itself, every event. Each key handed out is its caller's
/// reference (EVP_PKEY_free it); the cache keeps its own.
private final class KeyCache: @unchecked Sendable {
  private let lock = NSLock()
  private var keys: [[UInt8]: OpaquePointer] = [:]
  private let capacity = 10_000

  func key(_ bytes: [UInt8]) -> OpaquePointer? {
    lock.lock()
    defer { lock.unlock() }
    if let key = keys[bytes] {
      EVP_PKEY_up_ref(key)
      return key
    }
    guard
      let key = bytes.withUnsafeBufferPointer({
        EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, $0.baseAddress, $0.count)
      })
    else { return nil }
    if keys.count >= capacity {
      for old in keys.values { EVP_PKEY_free(old) }
      keys.removeAll(keepingCapacity: true)
    }
    keys[bytes] = key
    EVP_PKEY_up_ref(key)
    return key
  }
}

extension Ed25519 {
  fileprivate static let keys = KeyCache()

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
