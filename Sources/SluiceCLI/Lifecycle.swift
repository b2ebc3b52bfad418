import Dispatch
import Foundation
import Glibc
import Logging
import ServiceLifecycle
import Sluice
import Synchronization
import UnixSignals

/// Runs a blocking loop (the daemon, a backfill, `tail`) under
/// swift-service-lifecycle. The first SIGTERM or SIGINT starts the
/// `ServiceGroup`'s graceful shutdown, which sets the loop's `StopSignal`
/// (it finishes and acknowledges the batch in flight); a second one exits at
/// once (128 + the signal). Past `stopLimitSeconds` the group cancels the
/// service and the process exits 1 without finishing: the batch is replayed
/// on the next start. SIGQUIT exits 1 at once.
///
/// libpq blocks its thread, so the loop runs on a thread of its own, never
/// on the cooperative pool; the service only waits for it.
enum Lifecycle {
  static func run(
    _ name: String, logger: Logger, stopLimitSeconds: Int? = nil,
    _ body: @escaping @Sendable (StopSignal) throws -> Void
  ) throws {
    signal(SIGPIPE, SIG_IGN)  // a closed pipe is an error to handle, not a death
    let stop = StopSignal()
    let outcome = Shared<(any Error)?>(nil)
    let service = BlockingService(name: name, stop: stop, logger: logger, stopLimitSeconds: stopLimitSeconds) {
      do { try body(stop) } catch { outcome.withLock { $0 = error } }
    }
    // The signals are ours (below), not the group's: it has no way to act on a second one.
    var configuration = ServiceGroupConfiguration(
      services: [
        .init(
          service: service, successTerminationBehavior: .gracefullyShutdownGroup,
          failureTerminationBehavior: .gracefullyShutdownGroup)
      ],
      gracefulShutdownSignals: [], cancellationSignals: [], logger: logger)
    if let stopLimitSeconds { configuration.maximumGracefulShutdownDuration = .seconds(stopLimitSeconds) }
    let group = ServiceGroup(configuration: configuration)
    // The handlers exist before the signals are unblocked and before any
    // thread starts: a signal that was pending, or comes early, is handled.
    let handling = DispatchSemaphore(value: 0)
    Task {
      let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sigquit)
      handling.signal()
      var received = 0
      for await signal in signals {
        received += 1
        if signal == .sigquit {
          logger.error("SIGQUIT: exiting at once, without finishing the batch")
          exit(1)
        }
        if received > 1 {
          logger.warning("second \(signal): exiting at once, without finishing the batch")
          _exit(128 + signal.rawValue)
        }
        logger.info("\(signal): stopping after the batch in flight (a second signal exits at once)")
        await group.triggerGracefulShutdown()
      }
    }
    handling.wait()
    allowStopSignals()
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
  /// runner's thread did): unblock them before the loop's threads start, so
  /// that they inherit it.
  private static func allowStopSignals() {
    var set = sigset_t()
    sigemptyset(&set)
    for signalNumber in [SIGTERM, SIGINT, SIGQUIT] { sigaddset(&set, signalNumber) }
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
  }
}

/// The service: starts the loop's thread and waits for it; graceful
/// shutdown sets its stop signal; cancellation (the stop limit passed)
/// ends the process.
private struct BlockingService: Service {
  let name: String
  let stop: StopSignal
  let logger: Logger
  let stopLimitSeconds: Int?
  let body: @Sendable () -> Void

  func run() async throws {
    let (stop, logger, limit) = (stop, logger, stopLimitSeconds)
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
        stop.set()
      }
    } onCancel: {
      // The group cancels only when the graceful stop outlived its limit.
      logger.error("graceful stop took longer than \(limit ?? 0) s; exiting without finishing the batch")
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
