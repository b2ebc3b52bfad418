/// Which handler errors are worth another attempt (SPEC section 8). An
/// error that says the input itself is at fault fails the same way every
/// time: retrying it only holds every other client's events behind it.
public enum RetryRule {
  /// Classes and codes that may pass on a later attempt: serialization
  /// failures and deadlocks (40), lost connections (08), insufficient
  /// resources (53), lock and statement timeouts, server shutdowns; and,
  /// beyond the SPEC's list, the server's own trouble (58, system errors
  /// such as I/O; XX, internal errors) and `0A000`, which is what a cached
  /// plan says after a schema change (the retry prepares it again).
  static let retriedClasses: Set<Substring> = ["40", "08", "53", "58", "XX"]
  static let retriedCodes: Set<String> = ["55P03", "57014", "57P01", "57P02", "57P03", "0A000"]

  /// Whether a handler error with this SQLSTATE makes its event `dead` after
  /// one attempt. Nil (an error that is not the server's: a Swift handler's
  /// own, a timeout seen by the daemon) is retried: nothing says it cannot pass.
  public static func isFinal(sqlState: String?) -> Bool {
    guard let code = sqlState, code.count == 5 else { return false }
    return !retriedClasses.contains(code.prefix(2)) && !retriedCodes.contains(code)
  }
}
