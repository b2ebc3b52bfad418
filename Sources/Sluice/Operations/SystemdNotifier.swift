import Glibc

/// sd_notify(3) without libsystemd: datagrams to `$NOTIFY_SOCKET`. A no-op
/// when the variable is unset (not started by systemd).
public final class SystemdNotifier: @unchecked Sendable {
  private let path: String?
  /// From `$WATCHDOG_USEC`: how often systemd expects WATCHDOG=1.
  public let watchdogInterval: Duration?

  public init(environment: [String: String]) {
    path = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
    watchdogInterval = environment["WATCHDOG_USEC"].flatMap { UInt64($0) }.map { .microseconds($0) }
  }

  public var isEnabled: Bool { path != nil }

  /// Sends `KEY=value` lines; returns false if it could not.
  @discardableResult
  public func notify(_ state: String) -> Bool {
    guard let path else { return false }
    let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { return false }
    defer { close(descriptor) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    var bytes = Array(path.utf8)
    if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }  // abstract namespace
    let capacity = MemoryLayout.size(ofValue: address.sun_path)
    guard bytes.count < capacity else { return false }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
      raw.copyBytes(from: bytes)
    }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
    let message = Array(state.utf8)
    let sent = withUnsafePointer(to: &address) { pointer in
      pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
        message.withUnsafeBytes {
          sendto(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), socketAddress, length)
        }
      }
    }
    return sent == message.count
  }
}
