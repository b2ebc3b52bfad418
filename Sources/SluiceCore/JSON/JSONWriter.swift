/// Appends JSON to a byte buffer: no Foundation, no intermediate strings.
public struct JSONWriter: Sendable {
  public var bytes: [UInt8] = []

  public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

  public mutating func raw(_ text: String) { bytes.append(contentsOf: text.utf8) }
  public mutating func raw(_ byte: UInt8) { bytes.append(byte) }

  public mutating func string(_ text: String) {
    var text = text
    text.withUTF8 { string(utf8: $0) }
  }

  public mutating func string(utf8: UnsafeBufferPointer<UInt8>) {
    bytes.append(UInt8(ascii: "\""))
    var start = 0
    for index in 0..<utf8.count {
      let byte = utf8[index]
      guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
      bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<index]))
      switch byte {
      case UInt8(ascii: "\""): raw("\\\"")
      case UInt8(ascii: "\\"): raw("\\\\")
      case 0x0A: raw("\\n")
      case 0x0D: raw("\\r")
      case 0x09: raw("\\t")
      default:
        raw("\\u00")
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        bytes.append(hex[Int(byte >> 4)])
        bytes.append(hex[Int(byte & 0xF)])
      }
      start = index + 1
    }
    bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<utf8.count]))
    bytes.append(UInt8(ascii: "\""))
  }

  public mutating func key(_ name: String) {
    string(name)
    bytes.append(UInt8(ascii: ":"))
  }

  public mutating func value(_ value: ColumnValue) {
    switch value {
    case .null: raw("null")
    case .unchangedToast: raw("{\"unchanged_toast\":true}")
    case .bool(let flag): raw(flag ? "true" : "false")
    case .int(let number): raw(String(number))
    case .float(let number):
      if number.isFinite {
        raw(String(number))
      } else {
        string(number.isNaN ? "NaN" : number > 0 ? "Infinity" : "-Infinity")
      }
    case .numeric(let text):
      if text == "NaN" || text.hasSuffix("Infinity") { string(text) } else { raw(text) }
    case .json(let text): raw(text)
    case .text(let text), .uuid(let text), .timestamp(let text), .date(let text): string(text)
    case .bytes(let data): string(Base64.encode(data))
    case .array(let items):
      bytes.append(UInt8(ascii: "["))
      for (index, item) in items.enumerated() {
        if index > 0 { bytes.append(UInt8(ascii: ",")) }
        self.value(item)
      }
      bytes.append(UInt8(ascii: "]"))
    }
  }

  /// `{"name":value,…}` in column order.
  public mutating func object(_ row: [(String, ColumnValue)]) {
    bytes.append(UInt8(ascii: "{"))
    for (index, (name, columnValue)) in row.enumerated() {
      if index > 0 { bytes.append(UInt8(ascii: ",")) }
      key(name)
      value(columnValue)
    }
    bytes.append(UInt8(ascii: "}"))
  }
}

public enum Base64 {
  private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

  public static func encode(_ data: [UInt8]) -> String {
    var out: [UInt8] = []
    out.reserveCapacity((data.count + 2) / 3 * 4)
    var index = 0
    while index + 2 < data.count {
      let chunk = UInt32(data[index]) << 16 | UInt32(data[index + 1]) << 8 | UInt32(data[index + 2])
      for shift in [18, 12, 6, 0] { out.append(alphabet[Int(chunk >> UInt32(shift) & 0x3F)]) }
      index += 3
    }
    let rest = data.count - index
    if rest > 0 {
      var chunk = UInt32(data[index]) << 16
      if rest == 2 { chunk |= UInt32(data[index + 1]) << 8 }
      out.append(alphabet[Int(chunk >> 18 & 0x3F)])
      out.append(alphabet[Int(chunk >> 12 & 0x3F)])
      out.append(rest == 2 ? alphabet[Int(chunk >> 6 & 0x3F)] : UInt8(ascii: "="))
      out.append(UInt8(ascii: "="))
    }
    return String(decoding: out, as: UTF8.self)
  }
}

/// Postgres timestamps (microseconds since 2000-01-01 UTC) as ISO 8601.
public enum PostgresTime {
  /// Seconds from 1970-01-01 to 2000-01-01.
  public static let unixEpochOffset: Int64 = 946_684_800

  public static func fromUnix(microseconds: Int64) -> PostgresTimestamp {
    microseconds - unixEpochOffset * 1_000_000
  }

  public static func iso8601(_ timestamp: PostgresTimestamp) -> String {
    // Postgres writes ±infinity as Int64.max/min; anything past year 9999 is
    // corrupt or infinite, and must not overflow the arithmetic below.
    let limit: Int64 = 252_455_615_999_999_999  // 9999-12-31T23:59:59.999999Z in Postgres microseconds
    if timestamp > limit { return "infinity" }
    if timestamp < -limit - 63_113_904_000_000_000 { return "-infinity" }
    let micros = timestamp + unixEpochOffset * 1_000_000
    var seconds = micros / 1_000_000
    var fraction = micros % 1_000_000
    if fraction < 0 {
      fraction += 1_000_000
      seconds -= 1
    }
    var days = seconds / 86_400
    var secondOfDay = seconds % 86_400
    if secondOfDay < 0 {
      secondOfDay += 86_400
      days -= 1
    }
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468
    let era = (z >= 0 ? z : z - 146_096) / 146_097
    let doe = z - era * 146_097
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let day = doy - (153 * mp + 2) / 5 + 1
    let month = mp < 10 ? mp + 3 : mp - 9
    let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
    func pad(_ value: Int64, _ width: Int) -> String {
      let digits = String(value)
      return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
    var text = "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T"
    text += "\(pad(secondOfDay / 3600, 2)):\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2))"
    if fraction != 0 { text += "." + pad(fraction, 6) }
    return text + "Z"
  }
}
