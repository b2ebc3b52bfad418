/// Capped exponential backoff with full jitter: attempt n waits a random
/// time in [0, min(cap, base·2ⁿ)], so many clients do not retry in step.
public struct Backoff: Sendable, Equatable {
  public var baseMilliseconds: Int
  public var capMilliseconds: Int
  public private(set) var attempt = 0

  /// `attempt`: how many waits came before the next one.
  public init(baseMilliseconds: Int = 200, capMilliseconds: Int = 10_000, attempt: Int = 0) {
    self.baseMilliseconds = baseMilliseconds
    self.capMilliseconds = capMilliseconds
    self.attempt = max(0, attempt)
  }

  /// The longest wait of the next attempt, before jitter.
  public var ceilingMilliseconds: Int {
    min(capMilliseconds, baseMilliseconds << min(attempt, 20))
  }

  /// The next wait; `unit` is a random number in [0, 1).
  public mutating func next(unit: Double) -> Int {
    let ceiling = ceilingMilliseconds
    attempt += 1
    return max(1, Int(Double(ceiling) * min(max(unit, 0), 1)))
  }

  public mutating func reset() { attempt = 0 }
}
