import Glibc
import Synchronization

/// Asks a loop to stop (the lifecycle sets it on SIGTERM/SIGINT; tests set it); loops poll it between reads.
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
}
