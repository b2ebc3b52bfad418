/// How far a backfill is (SPEC 8: every 5 s in the log, in systemd's
/// `STATUS=` and in `status`; a bar on a terminal). Pure: the caller gives
/// the time, in seconds on any monotonic clock.
public struct BackfillProgress: Sendable, Equatable {
  public let source: String
  public let total: Int
  public private(set) var done = 0
  public let started: Double
  private var lastReport: Double

  public init(source: String, total: Int, now: Double) {
    self.source = source
    self.total = total
    started = now
    lastReport = now
  }

  /// Records the rows done so far. Returns whether a report is due: every
  /// `interval` seconds, and once at the end.
  public mutating func advance(to done: Int, now: Double, interval: Double = 5) -> Bool {
    self.done = min(done, total)
    let due = now - lastReport >= interval || (self.done == total && total > 0)
    if due { lastReport = now }
    return due
  }

  /// Rows a second since the start (0 before any time has passed).
  public func rate(now: Double) -> Double {
    let elapsed = now - started
    return elapsed > 0 ? Double(done) / elapsed : 0
  }

  /// Seconds left at the rate so far; nil until there is a rate.
  public func etaSeconds(now: Double) -> Double? {
    let rate = rate(now: now)
    guard rate > 0 else { return nil }
    return Double(total - done) / rate
  }

  public var percent: Double { total > 0 ? 100 * Double(done) / Double(total) : 100 }

  /// `xp.actions: 120000 of 1500000 rows (8.0%), 25000 rows/s, ETA 55 s`
  public func line(now: Double) -> String {
    "\(source): \(done) of \(total) rows (\(Self.fixed(percent))%), \(Int(rate(now: now).rounded())) rows/s, ETA "
      + (etaSeconds(now: now).map { Self.duration($0) } ?? "unknown")
  }

  /// `[#######.......................]   8.0% 120000/1500000 25000 rows/s ETA 55 s`
  public func bar(now: Double, width: Int = 30) -> String {
    let filled = total > 0 ? min(width, width * done / total) : width
    return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] "
      + "\(Self.fixed(percent))% \(done)/\(total) \(Int(rate(now: now).rounded())) rows/s ETA "
      + (etaSeconds(now: now).map { Self.duration($0) } ?? "?")
  }

  static func fixed(_ value: Double) -> String {
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
  }

  /// `55 s`, `4 min 10 s`, `2 h 5 min`
  static func duration(_ seconds: Double) -> String {
    let whole = Int(seconds.rounded())
    if whole < 60 { return "\(whole) s" }
    if whole < 3600 { return "\(whole / 60) min \(whole % 60) s" }
    return "\(whole / 3600) h \(whole % 3600 / 60) min"
  }
}
