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
      // Values may hold client-chosen text: control characters are escaped,
      // so a row cannot forge a log line.
      line = "\(level) \(Self.escaped("\(message)"))"
      for key in keys { line += " \(key)=\(Self.fieldValue(merged[key].map { "\($0)" } ?? ""))" }
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

  /// Text with control characters (C0, DEL, C1, and the Unicode line and
  /// paragraph separators) written as `\n`, `\t` or `\u{XX}`.
  static func escaped(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: isControl) else { return text }
    var out = ""
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      case "\\": out += "\\\\"
      case _ where isControl(scalar): out += "\\u{\(String(scalar.value, radix: 16))}"
      default: out.unicodeScalars.append(scalar)
      }
    }
    return out
  }

  /// A field's value, escaped, and quoted when it holds a space, `=` or
  /// a quote, so that a value cannot pass for further fields.
  static func fieldValue(_ text: String) -> String {
    let value = escaped(text)
    guard value.contains(where: { $0 == " " || $0 == "=" || $0 == "\"" }) else { return value }
    var quoted = "\""
    for character in value {
      if character == "\"" { quoted += "\\" }
      quoted.append(character)
    }
    return quoted + "\""
  }

  /// C0, DEL, C1, the line and paragraph separators, and the bidirectional
  /// controls (which reorder how a terminal shows the rest of the line).
  private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
    let value = scalar.value
    return value < 0x20 || (0x7F...0x9F).contains(value) || value == 0x2028 || value == 0x2029
      || (0x202A...0x202E).contains(value) || (0x2066...0x2069).contains(value) || value == 0x200E || value == 0x200F
  }

  /// Installs the handler process-wide.
  public static func bootstrap(level: Configuration.LogLevel, format: Configuration.LogFormat) {
    let mapped = Logger.Level(rawValue: level.rawValue) ?? .info
    LoggingSystem.bootstrap { label in SluiceLogHandler(label: label, level: mapped, format: format) }
  }
}
