import CLibPQ
import Foundation

/// Cancels whatever a connection is running once a deadline passes: the
/// handler timeout (SPEC section 8). One thread per connection, parked
/// while disarmed. While armed it also calls `tick` about every second, so
/// a long but bounded statement still counts as progress for the watchdog.
public final class StatementDeadline: @unchecked Sendable {
  private let cancel: CancelRequest
  private let condition = NSCondition()
  private var deadline: ContinuousClock.Instant?
  private var fired = false
  /// A cancel request is on its way: `run` does not return before it is
  /// delivered, so it cannot land on the statement after the one it was for.
  private var cancelling = false
  private var closed = false
  private let tick: @Sendable () -> Void

  public init(_ connection: PGConnection, tick: @escaping @Sendable () -> Void = {}) {
    cancel = CancelRequest(connection)
    self.tick = tick
    let thread = Thread { [self] in watch() }
    thread.name = "sluice-deadline"
    thread.start()
  }

  /// Ends the watching thread.
  public func close() {
    condition.lock()
    closed = true
    condition.broadcast()
    condition.unlock()
  }

  /// Runs `body` with a deadline. Returns its result and whether the
  /// deadline passed (then whatever ran was cancelled, or ran too long).
  public func run<T>(milliseconds: Int, _ body: () throws -> T) rethrows -> (T, timedOut: Bool) {
    condition.lock()
    deadline = .now.advanced(by: .milliseconds(milliseconds))
    fired = false
    condition.broadcast()
    condition.unlock()
    defer {
      condition.lock()
      deadline = nil
      condition.unlock()
    }
    let result: T
    do {
      result = try body()
    } catch {
      waitForCancel()
      throw error
    }
    waitForCancel()
    condition.lock()
    let late = fired || (deadline.map { ContinuousClock.now >= $0 } ?? false)
    deadline = nil
    condition.unlock()
    return (result, late)
  }

  private func waitForCancel() {
    condition.lock()
    deadline = nil
    while cancelling { condition.wait() }
    condition.unlock()
  }

  private func watch() {
    condition.lock()
    while !closed {
      guard let due = deadline else {
        condition.wait()
        continue
      }
      let now = ContinuousClock.now
      if now >= due {
        deadline = nil
        fired = true
        cancelling = true
        condition.unlock()
        cancel.send()
        condition.lock()
        cancelling = false
        condition.broadcast()
        continue
      }
      let step = min(due, now.advanced(by: .seconds(1)))
      _ = condition.wait(until: Date().addingTimeInterval(now.duration(to: step).seconds))
      if deadline != nil {
        condition.unlock()
        tick()
        condition.lock()
      }
    }
    condition.unlock()
  }

}

/// Asks the server to cancel what a connection is running, from any thread
/// (libpq's cancel object is made for that; the connection itself is not).
public final class CancelRequest: @unchecked Sendable {
  private let cancel: OpaquePointer?

  public init(_ connection: PGConnection) {
    cancel = PQgetCancel(connection.handle)
  }

  deinit {
    if let cancel { PQfreeCancel(cancel) }
  }

  public func send() {
    guard let cancel else { return }
    var buffer = [CChar](repeating: 0, count: 256)
    _ = PQcancel(cancel, &buffer, Int32(buffer.count))
  }
}

extension Duration {
  var seconds: Double {
    let (whole, fraction) = components
    return Double(whole) + Double(fraction) / 1e18
  }
}
