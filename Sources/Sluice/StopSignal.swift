import Glibc
import Synchronization

/// Set by SIGTERM/SIGINT (or a test); loops poll it between reads.
public final class StopSignal: Sendable {
  private let flag = Atomic<Bool>(false)

  public init() {}

  public var isSet: Bool { flag.load(ordering: .acquiring) }
  public func set() { flag.store(true, ordering: .releasing) }

  /// Sleeps up to `milliseconds`, waking early when the signal is set.
  /// Returns false if it was set.
  @discardableResult
  public func sleep(milliseconds: Int) -> Bool {
    var left = milliseconds
    while left > 0 {
      if isSet { return false }
      let step = min(left, 50)
      usleep(UInt32(step) * 1000)
      left -= step
    }
    return !isSet
  }

  /// The process-wide signal that SIGTERM and SIGINT set.
  public static let process = StopSignal()

  /// Routes SIGTERM and SIGINT to `StopSignal.process`; a second signal exits at once.
  public static func installProcessHandlers() {
    let handler: @convention(c) (Int32) -> Void = { signalNumber in
      if StopSignal.process.isSet { _exit(128 + signalNumber) }
      StopSignal.process.set()
    }
    signal(SIGTERM, handler)
    signal(SIGINT, handler)
    signal(SIGPIPE, SIG_IGN)
    // A parent may hand us a mask with these blocked (a test runner's thread
    // did): unblock them before any thread starts, so that every thread inherits it.
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGTERM)
    sigaddset(&set, SIGINT)
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
  }
}
