import Dispatch
import Foundation
import Glibc
import Logging
import ServiceLifecycle
import Sluice
import Synchronization
import UnixSignals

/// Runs a blocking loop (the daemon, a backfill, `tail`) under
/// swift-service-lifecycle: a `ServiceGroup` owns SIGTERM and SIGINT and
/// turns the first into a graceful shutdown, which sets the loop's
/// `StopSignal` (it finishes and acknowledges the batch in flight). Past
/// `stopLimitSeconds` the group cancels the service, and the process
/// exits 1 without finishing: the batch is replayed on the next start.
/// SIGQUIT cancels at once.
///
/// libpq blocks its thread, so the loop runs on a thread of its own, never
/// on the cooperative pool; the service only waits for it.
enum Lifecycle {
  static func run(
    _ name: String, logger: Logger, stopLimitSeconds: Int? = nil,
    _ body: @escaping @Sendable (StopSignal) throws -> Void
  ) throws {
    allowStopSignals()
    let stop = StopSignal()
    let outcome = Shared<(any Error)?>(nil)
    let service = BlockingService(name: name, stop: stop, logger: logger, stopLimitSeconds: stopLimitSeconds) {
      do { try body(stop) } catch { outcome.withLock { $0 = error } }
    }
    var configuration = ServiceGroupConfiguration(
      services: [
        .init(
          service: service, successTerminationBehavior: .gracefullyShutdownGroup,
          failureTerminationBehavior: .gracefullyShutdownGroup)
      ],
      gracefulShutdownSignals: [.sigterm, .sigint], cancellationSignals: [.sigquit], logger: logger)
    if let stopLimitSeconds { configuration.maximumGracefulShutdownDuration = .seconds(stopLimitSeconds) }
    let group = ServiceGroup(configuration: configuration)
    // The calling thread is the main thread, not one of the pool's: it may wait.
    let finished = DispatchSemaphore(value: 0)
    Task {
      do { try await group.run() } catch { outcome.withLock { $0 = $0 ?? error } }
      finished.signal()
    }
    finished.wait()
    if let error = outcome.withLock({ $0 }) { throw error }
  }

  /// A parent may hand us a mask with SIGTERM and SIGINT blocked (a test
  /// runner's thread did): unblock them before any thread starts, so every
  /// thread inherits it. A closed pipe is an error to handle, not a death.
  private static func allowStopSignals() {
    signal(SIGPIPE, SIG_IGN)
    var set = sigset_t()
    sigemptyset(&set)
    for signalNumber in [SIGTERM, SIGINT, SIGQUIT] { sigaddset(&set, signalNumber) }
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
  }
}

/// The service: starts the loop's thread and waits for it; graceful
/// shutdown sets its stop signal; cancellation (the stop limit passed,
/// or SIGQUIT) ends the process.
private struct BlockingService: Service {
  let name: String
  let stop: StopSignal
  let logger: Logger
  let stopLimitSeconds: Int?
  let body: @Sendable () -> Void

  func run() async throws {
    let (stop, logger, limit) = (stop, logger, stopLimitSeconds)
    let stopping = Shared<ContinuousClock.Instant?>(nil)
    await withTaskCancellationHandler {
      await withGracefulShutdownHandler {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
          let thread = Thread { [body] in
            body()
            continuation.resume()
          }
          thread.name = name
          thread.stackSize = 8 << 20  // as the main thread's
          thread.start()
        }
      } onGracefulShutdown: {
        stopping.withLock { $0 = $0 ?? .now }
        stop.set()
      }
    } onCancel: {
      let since = stopping.withLock { $0 }
      if let limit, let since, since.duration(to: .now) >= .seconds(limit) - .milliseconds(500) {
        logger.error("graceful stop took longer than \(limit) s; exiting without finishing the batch")
      } else {
        logger.error("stopped at once (SIGQUIT), without finishing the batch")
      }
      exit(1)
    }
  }
}

/// A value shared between the threads and tasks above.
private final class Shared<Value: Sendable>: Sendable {
  private let mutex: Mutex<Value>
  init(_ value: Value) { mutex = Mutex(value) }
  func withLock<T>(_ body: (inout Value) -> T) -> T { mutex.withLock { body(&$0) } }
}
