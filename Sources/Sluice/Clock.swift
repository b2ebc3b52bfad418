import Glibc
import SluiceCore

/// The one place Sluice reads the wall clock.
enum Clock {
  /// Microseconds since 2000-01-01 UTC (Postgres's epoch), for status updates, logs and latency.
  static func postgresNow() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return PostgresTime.fromUnix(microseconds: Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1000)
  }

  /// Milliseconds since 1970 UTC: when deliveries fall due, and their `webhook-timestamp`.
  static func unixMilliseconds() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000
  }
}

extension Duration {
  /// The duration in seconds, as a Double (metrics, logs).
  var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
