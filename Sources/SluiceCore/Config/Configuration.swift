/// Everything the daemon reads from its environment, validated before
/// anything connects. Every default lives here.
public struct Configuration: Sendable, Equatable {
  public enum LogFormat: String, Sendable { case text, json }
  public enum LogLevel: String, Sendable, CaseIterable { case trace, debug, info, notice, warning, error, critical }
  public struct Address: Sendable, Equatable {
    public var host: String
    public var port: UInt16
  }

  public var databaseURL: String
  public var slot: String = "sluice"
  public var publication: String = "sluice"
  public var batchSize: Int = 1000
  public var batchTimeoutMilliseconds: Int = 20
  public var maxAttempts: Int = 5
  /// Longest one handler attempt may run (SPEC section 8).
  public var handlerTimeoutMilliseconds: Int = 10_000
  /// Webhook delivery attempts before `dead`, and the first retry's delay (SPEC section 9).
  public var outboxMaxAttempts: Int = 10
  public var outboxBackoffMilliseconds: Int = 1000
  /// How often retention runs; 0 = never (SPEC section 10).
  public var retentionIntervalSeconds: Int = 60
  /// Events per ledger partition: the hot one is sealed and a new one
  /// opened when it holds this many (docs/ledger.md).
  public var ledgerPartitionEvents: Int = 1_000_000
  /// Whether each event's outcome is written to `sluice.outcomes` for its
  /// actor to read (SPEC section 12), how long an outcome is kept (seconds),
  /// and the publication that carries the table to a sync layer (nil: none).
  public var outcomes = false
  public var outcomeRetentionSeconds: Int = 7 * 86_400
  /// Delivered outbox rows older than this are deleted (SPEC section 10).
  public var outboxRetentionSeconds: Int = 7 * 86_400
  public var outcomesPublication: String?
  /// nil when metrics are `off`.
  public var metricsAddress: Address? = Address(host: "127.0.0.1", port: 9464)
  public var logLevel: LogLevel = .info
  public var logFormat: LogFormat = .text

  public init(databaseURL: String) { self.databaseURL = databaseURL }

  /// Reads `SLUICE_*` variables. Throws for the first missing or malformed one.
  public init(environment: [String: String]) throws(ConfigurationError) {
    func value(_ name: String) throws(ConfigurationError) -> String? {
      guard let raw = environment[name] else { return nil }
      let trimmed = raw.trimmingWhitespace()
      if trimmed.isEmpty { throw ConfigurationError(variable: name, message: "is set but empty") }
      return trimmed
    }
    func integer(_ name: String, _ range: ClosedRange<Int>) throws(ConfigurationError) -> Int? {
      guard let text = try value(name) else { return nil }
      guard let number = Int(text), range.contains(number) else {
        throw ConfigurationError(
          variable: name, message: "must be an integer from \(range.lowerBound) to \(range.upperBound), got '\(text)'")
      }
      return number
    }
    func identifier(_ name: String) throws(ConfigurationError) -> String? {
      guard let text = try value(name) else { return nil }
      guard Self.isIdentifier(text) else {
        throw ConfigurationError(
          variable: name,
          message: "must be 1-63 characters of a-z, 0-9 and _, starting with a letter or _, got '\(text)'")
      }
      return text
    }

    guard let url = try value("SLUICE_DATABASE_URL") else {
      throw ConfigurationError(
        variable: "SLUICE_DATABASE_URL", message: "is required: a libpq URI (postgresql://user@host/db) or conninfo")
    }
    self.init(databaseURL: url)
    if let slot = try identifier("SLUICE_SLOT") { self.slot = slot }
    if let publication = try identifier("SLUICE_PUBLICATION") { self.publication = publication }
    if let size = try integer("SLUICE_BATCH_SIZE", 1...100_000) { batchSize = size }
    if let timeout = try integer("SLUICE_BATCH_TIMEOUT_MS", 0...60_000) { batchTimeoutMilliseconds = timeout }
    if let attempts = try integer("SLUICE_MAX_ATTEMPTS", 1...1000) { maxAttempts = attempts }
    if let timeout = try integer("SLUICE_HANDLER_TIMEOUT_MS", 1...3_600_000) { handlerTimeoutMilliseconds = timeout }
    if let attempts = try integer("SLUICE_OUTBOX_MAX_ATTEMPTS", 1...1000) { outboxMaxAttempts = attempts }
    if let backoff = try integer("SLUICE_OUTBOX_BACKOFF_MS", 1...600_000) { outboxBackoffMilliseconds = backoff }
    if let interval = try integer("SLUICE_RETENTION_INTERVAL_S", 0...86_400) { retentionIntervalSeconds = interval }
    if let events = try integer("SLUICE_LEDGER_PARTITION_EVENTS", 100...1_000_000_000) {
      ledgerPartitionEvents = events
    }
    if let flag = try value("SLUICE_OUTCOMES") {
      switch flag.lowercased() {
      case "on", "true", "yes", "1": outcomes = true
      case "off", "false", "no", "0": outcomes = false
      default: throw ConfigurationError(variable: "SLUICE_OUTCOMES", message: "must be on or off, got '\(flag)'")
      }
    }
    /// An interval of 1 minute to 100 years, in seconds.
    func retention(_ variable: String) throws(ConfigurationError) -> Int? {
      guard let text = try value(variable) else { return nil }
      guard let seconds = Self.intervalSeconds(text), (60...(100 * 365 * 86_400)).contains(seconds) else {
        throw ConfigurationError(
          variable: variable,
          message: "must be an interval from 1 minute to 100 years, such as '7 days' or '12 hours', got '\(text)'")
      }
      return seconds
    }
    if let seconds = try retention("SLUICE_OUTCOME_RETENTION") { outcomeRetentionSeconds = seconds }
    if let seconds = try retention("SLUICE_OUTBOX_RETENTION") { outboxRetentionSeconds = seconds }
    if let name = try identifier("SLUICE_OUTCOMES_PUBLICATION") {
      guard name != publication else {
        throw ConfigurationError(
          variable: "SLUICE_OUTCOMES_PUBLICATION",
          message: "must differ from SLUICE_PUBLICATION ('\(name)'): the daemon would stream its own outcomes")
      }
      outcomesPublication = name
    }
    if let address = try value("SLUICE_METRICS_ADDR") {
      if address == "off" {
        metricsAddress = nil
      } else {
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]),
          port > 0, colon > address.startIndex
        else {
          throw ConfigurationError(
            variable: "SLUICE_METRICS_ADDR", message: "must be HOST:PORT (e.g. 127.0.0.1:9464) or off, got '\(address)'"
          )
        }
        metricsAddress = Address(host: String(address[..<colon]), port: port)
      }
    }
    if let level = try value("SLUICE_LOG_LEVEL") {
      guard let parsed = LogLevel(rawValue: level.lowercased()) else {
        throw ConfigurationError(
          variable: "SLUICE_LOG_LEVEL",
          message: "must be one of \(LogLevel.allCases.map(\.rawValue).joined(separator: ", ")), got '\(level)'")
      }
      logLevel = parsed
    }
    if let format = try value("SLUICE_LOG_FORMAT") {
      guard let parsed = LogFormat(rawValue: format.lowercased()) else {
        throw ConfigurationError(variable: "SLUICE_LOG_FORMAT", message: "must be text or json, got '\(format)'")
      }
      logFormat = parsed
    }
  }

  /// Seconds in an interval written as Postgres writes simple ones: one or
  /// more "number unit" pairs ("7 days", "1 day 12 hours", "90 minutes",
  /// "30s"); units from seconds to years (a month is 30 days, a year 365).
  /// nil when it is not such an interval.
  public static func intervalSeconds(_ text: String) -> Int? {
    let units: [(names: [String], seconds: Int)] = [
      (["s", "sec", "secs", "second", "seconds"], 1), (["min", "mins", "minute", "minutes"], 60),
      (["h", "hour", "hours"], 3600), (["d", "day", "days"], 86_400), (["w", "week", "weeks"], 7 * 86_400),
      (["mon", "month", "months"], 30 * 86_400), (["y", "year", "years"], 365 * 86_400),
    ]
    // "7days" and "7 days" alike: split digits from letters, then pair them.
    var tokens: [String] = []
    for character in text.lowercased() {
      if character.isWhitespace {
        tokens.append("")
        continue
      }
      let isDigit = character.isASCII && character.isNumber
      if let last = tokens.last?.last, !last.isWhitespace, (last.isASCII && last.isNumber) == isDigit {
        tokens[tokens.count - 1].append(character)
      } else {
        tokens.append(String(character))
      }
    }
    tokens.removeAll { $0.isEmpty }
    guard !tokens.isEmpty, tokens.count % 2 == 0 else { return nil }
    var total = 0
    for pair in stride(from: 0, to: tokens.count, by: 2) {
      guard tokens[pair].count <= 9, let number = Int(tokens[pair]),
        let unit = units.first(where: { $0.names.contains(tokens[pair + 1]) })
      else { return nil }
      let (seconds, overflow) = number.multipliedReportingOverflow(by: unit.seconds)
      let (sum, overflowSum) = total.addingReportingOverflow(seconds)
      guard !overflow, !overflowSum else { return nil }
      total = sum
    }
    return total
  }

  /// A lower-case SQL identifier Postgres accepts unquoted (slot names must be such).
  public static func isIdentifier(_ text: String) -> Bool {
    guard (1...63).contains(text.utf8.count), let first = text.utf8.first,
      first == UInt8(ascii: "_") || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first)
    else { return false }
    return text.utf8.allSatisfy {
      $0 == UInt8(ascii: "_") || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0)
        || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
    }
  }

  /// The database URL with any password replaced by `***`, for logs and status.
  public var redactedDatabaseURL: String { Self.redact(databaseURL) }

  public static func redact(_ conninfo: String) -> String {
    if conninfo.hasPrefix("postgres://") || conninfo.hasPrefix("postgresql://") {
      guard let scheme = conninfo.firstRange(of: "://") else { return conninfo }
      let rest = conninfo[scheme.upperBound...]
      let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
      var result = String(conninfo[..<scheme.upperBound])
      let authority = rest[..<authorityEnd]
      if let at = authority.lastIndex(of: "@"), let colon = authority[..<at].firstIndex(of: ":") {
        result += authority[..<colon] + ":***" + authority[at...]
      } else {
        result += authority
      }
      var query = String(rest[authorityEnd...])
      query = redactKeyValue(query, separator: "&")
      return result + query
    }
    return redactKeyValue(conninfo, separator: " ")
  }

  /// Replaces the value of every `password=` pair.
  private static func redactKeyValue(_ text: String, separator: Character) -> String {
    var output = ""
    var rest = Substring(text)
    while let range = rest.firstRange(of: "password") {
      output += rest[..<range.upperBound]
      rest = rest[range.upperBound...]
      let afterSpaces = rest.drop(while: { $0 == " " })
      guard afterSpaces.first == "=" else { continue }
      output += "="
      var value = afterSpaces.dropFirst().drop(while: { $0 == " " })
      if value.first == "'" {
        // Quoted conninfo value: skip to the closing unescaped quote.
        value = value.dropFirst()
        while let char = value.first, char != "'" { value = value.dropFirst(char == "\\" ? 2 : 1) }
        rest = value.dropFirst()
      } else {
        rest = value.drop(while: { $0 != separator && $0 != "&" && $0 != " " })
      }
      output += "***"
    }
    return output + rest
  }
}

public struct ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
  public var variable: String
  public var message: String
  public var description: String { "configuration error: \(variable) \(message)" }
}

extension String {
  func trimmingWhitespace() -> String {
    String(self.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
  }
}
