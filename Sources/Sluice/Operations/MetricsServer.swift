import Foundation
import Glibc
import Logging
import SluiceCore
import Synchronization

/// A minimal HTTP/1.0 server for `GET /metrics` and `GET /healthz`, one
/// request per connection. Each connection is served on a thread of its
/// own, at most `maximumClients` at once (more are closed at once), with a
/// deadline for reading the request and one for sending the answer: a
/// client that never sends or never reads holds only its own thread, for
/// at most those deadlines, never another client's probe.
public final class MetricsServer: @unchecked Sendable {
  let listener: Int32
  let metrics: DaemonMetrics
  let healthy: @Sendable () -> Bool
  private let stopped = StopSignal()
  private let clients = Atomic<Int>(0)
  static let maximumClients = 16
  /// Seconds a client has to send its request, and to take the answer.
  static let deadlineSeconds = 2

  /// Binds and starts serving; throws if the address cannot be bound.
  public init(address: Configuration.Address, metrics: DaemonMetrics, healthy: @escaping @Sendable () -> Bool) throws {
    self.metrics = metrics
    self.healthy = healthy
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
    var info: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(address.host, String(address.port), &hints, &info) == 0, let first = info else {
      throw OperationError("SLUICE_METRICS_ADDR: cannot resolve \(address.host)")
    }
    defer { freeaddrinfo(info) }
    let descriptor = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { throw OperationError("metrics: socket() failed: errno \(errno)") }
    var yes: Int32 = 1
    setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
    guard bind(descriptor, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0, listen(descriptor, 16) == 0 else {
      let reason = String(cString: strerror(errno))
      close(descriptor)
      throw OperationError("cannot listen on \(address.host):\(address.port) (SLUICE_METRICS_ADDR): \(reason)")
    }
    listener = descriptor
    let thread = Thread { [self] in serve() }
    thread.name = "sluice-metrics"
    thread.start()
  }

  public func stop() {
    stopped.set()
    shutdown(listener, Int32(SHUT_RDWR))
    close(listener)
  }

  private func serve() {
    while !stopped.isSet {
      var descriptor = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
      guard poll(&descriptor, 1, 200) > 0, !stopped.isSet else { continue }
      let client = accept(listener, nil, nil)
      guard client >= 0 else { continue }
      _ = fcntl(client, F_SETFD, FD_CLOEXEC)
      guard clients.add(1, ordering: .relaxed).newValue <= Self.maximumClients else {
        clients.subtract(1, ordering: .relaxed)
        close(client)
        continue
      }
      let thread = Thread { [self] in
        respond(client)
        close(client)
        clients.subtract(1, ordering: .relaxed)
      }
      thread.name = "sluice-metrics-client"
      thread.start()
    }
  }

  private func respond(_ client: Int32) {
    var timeout = timeval(tv_sec: Self.deadlineSeconds, tv_usec: 0)
    setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var buffer = [UInt8](repeating: 0, count: 4096)
    let count = read(client, &buffer, buffer.count)
    guard count > 0 else { return }
    let request = String(decoding: buffer[..<count], as: UTF8.self)
    let line = request.split(separator: "\r\n", maxSplits: 1).first.map(String.init) ?? ""
    let parts = line.split(separator: " ")
    let path = parts.count > 1 ? String(parts[1].split(separator: "?").first ?? "") : ""
    let (status, type, body): (String, String, String)
    switch (parts.first, path) {
    case ("GET", "/metrics"):
      (status, type, body) = ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render())
    case ("GET", "/healthz"):
      (status, type, body) =
        healthy() ? ("200 OK", "text/plain", "ok\n") : ("503 Service Unavailable", "text/plain", "not streaming\n")
    default:
      (status, type, body) = ("404 Not Found", "text/plain", "try /metrics or /healthz\n")
    }
    let payload = Array(body.utf8)
    let head =
      "HTTP/1.0 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(payload.count)\r\nConnection: close\r\n\r\n"
    let response = Array(head.utf8) + payload
    var offset = 0
    let started = ContinuousClock.now
    while offset < response.count, started.duration(to: .now) < .seconds(2 * Self.deadlineSeconds) {
      let written = response[offset...].withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
      if written <= 0 { return }
      offset += written
    }
  }
}
