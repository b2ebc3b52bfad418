import Glibc
public import Logging
public import SluiceCore

/// Log lines on standard error, as `text` (journald-friendly) or `json` (one object a line).
public struct SluiceLogHandler: LogHandler {
  public var metadata: Logger.Metadata = [:]
  public var logLevel: Logger.Level
  let label: String
  let format: Configuration.LogFormat

  public init(label: String, level: Logger.Level, format: Configuration.LogFormat) {
    self.label = label
    self.logLevel = level
    self.format = format
  }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  public func log(event: LogEvent) {
    let level = event.level
    let message = event.message
    var merged = metadata
    if let extra = event.metadata { merged.merge(extra) { $1 } }
    let keys = merged.keys.sorted()
    var line: String
    switch format {
    case .text:
      line = "\(level) \(message)"
      for key in keys { line += " \(key)=\(merged[key].map { "\($0)" } ?? "")" }
    case .json:
      var writer = JSONWriter()
      writer.raw("{\"ts\":")
      writer.string(PostgresTime.iso8601(Clock.postgresNow()))
      writer.raw(",\"level\":")
      writer.string(level.rawValue)
      writer.raw(",\"msg\":")
      writer.string("\(message)")
      for key in keys {
        writer.raw(",")
        writer.key(key)
        writer.string(merged[key].map { "\($0)" } ?? "")
      }
      writer.raw("}")
      line = String(decoding: writer.bytes, as: UTF8.self)
    }
    line += "\n"
    var bytes = Array(line.utf8)
    // One write(2) per line, so concurrent lines never interleave.
    _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
  }

  /// Installs the handler process-wide.
  public static func bootstrap(level: Configuration.LogLevel, format: Configuration.LogFormat) {
    let mapped = Logger.Level(rawValue: level.rawValue) ?? .info
    LoggingSystem.bootstrap { label in SluiceLogHandler(label: label, level: mapped, format: format) }
  }
}
