/// What one delivery attempt got back.
public enum AttemptResult: Sendable, Equatable {
  /// The endpoint answered with an HTTP status (and maybe `Retry-After`, in seconds).
  case answered(status: Int, retryAfterSeconds: Int?)
  /// No answer: the connection failed or the endpoint's timeout passed.
  case failed(String)
}

/// What becomes of a delivery after an attempt.
public enum DeliveryDecision: Sendable, Equatable {
  case delivered
  /// Pending again, to be tried after this many milliseconds.
  case retry(afterMilliseconds: Int)
  case dead
}

/// SPEC section 9: a 2xx is `delivered`; connection errors, timeouts, 408,
/// 425, 429 and 5xx are retried with exponential backoff and full jitter
/// from `SLUICE_OUTBOX_BACKOFF_MS`, doubling up to 10 minutes, honouring
/// `Retry-After` (up to the same ceiling); after `SLUICE_OUTBOX_MAX_ATTEMPTS`
/// attempts, `dead`. Any other answer is `dead` at once (a 3xx too:
/// redirects are not followed, as a signed delivery names its receiver).
public struct DeliveryRules: Sendable, Equatable {
  public var maxAttempts: Int
  public var backoffMilliseconds: Int
  /// The longest wait between two attempts.
  public static let ceilingMilliseconds = 600_000

  public init(maxAttempts: Int = 10, backoffMilliseconds: Int = 1000) {
    self.maxAttempts = maxAttempts
    self.backoffMilliseconds = backoffMilliseconds
  }

  public static func isRetryable(status: Int) -> Bool {
    status == 408 || status == 425 || status == 429 || (500...599).contains(status)
  }

  /// `attempts` counts this attempt; `unit` is a random number in [0, 1) for the jitter.
  public func decide(_ result: AttemptResult, attempts: Int, unit: Double) -> DeliveryDecision {
    var retryAfter: Int?
    switch result {
    case .answered(let status, let after):
      if (200...299).contains(status) { return .delivered }
      guard Self.isRetryable(status: status) else { return .dead }
      retryAfter = after
    case .failed:
      break
    }
    guard attempts < maxAttempts else { return .dead }
    if let retryAfter {
      // Clamped before scaling: a receiver's header must not overflow the arithmetic.
      return .retry(afterMilliseconds: min(max(0, retryAfter), Self.ceilingMilliseconds / 1000) * 1000)
    }
    var backoff = Backoff(
      baseMilliseconds: backoffMilliseconds, capMilliseconds: Self.ceilingMilliseconds, attempt: attempts - 1)
    return .retry(afterMilliseconds: backoff.next(unit: unit))
  }
}
