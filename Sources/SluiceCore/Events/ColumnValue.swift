/// A column value decoded from pgoutput's text format into a type a handler
/// can use without parsing.
public indirect enum ColumnValue: Equatable, Sendable {
  case null
  /// A TOASTed value that an update left unchanged: pgoutput does not send it.
  case unchangedToast
  case bool(Bool)
  case int(Int64)
  case float(Double)
  /// Exact decimal text as Postgres printed it (`NaN`, `Infinity` included).
  case numeric(String)
  case text(String)
  case uuid(String)
  /// JSON text exactly as the server printed it (json or jsonb).
  case json(String)
  /// ISO 8601: `2024-05-01T12:00:00.5Z` (timestamptz) or without zone (timestamp).
  case timestamp(String)
  case date(String)
  case bytes([UInt8])
  case array([ColumnValue])

  /// The value as text, if it has a natural text form (for ids, actors, keys).
  public var textValue: String? {
    switch self {
    case .null, .unchangedToast, .array, .bytes: nil
    case .bool(let value): value ? "true" : "false"
    case .int(let value): String(value)
    case .float(let value): String(value)
    case .numeric(let text), .text(let text), .uuid(let text), .json(let text), .timestamp(let text),
      .date(let text):
      text
    }
  }
}

/// Well-known type OIDs from `pg_type.dat`; everything else is decoded as text.
public enum TypeOID {
  public static let bool: UInt32 = 16
  public static let bytea: UInt32 = 17
  public static let char: UInt32 = 18
  public static let name: UInt32 = 19
  public static let int8: UInt32 = 20
  public static let int2: UInt32 = 21
  public static let int4: UInt32 = 23
  public static let text: UInt32 = 25
  public static let oid: UInt32 = 26
  public static let json: UInt32 = 114
  public static let float4: UInt32 = 700
  public static let float8: UInt32 = 701
  public static let bpchar: UInt32 = 1042
  public static let varchar: UInt32 = 1043
  public static let date: UInt32 = 1082
  public static let timestamp: UInt32 = 1114
  public static let timestamptz: UInt32 = 1184
  public static let numeric: UInt32 = 1700
  public static let uuid: UInt32 = 2950
  public static let jsonb: UInt32 = 3802

  /// Array type OID → element type OID.
  public static let arrayElement: [UInt32: UInt32] = [
    1000: bool, 1001: bytea, 1002: char, 1003: name, 1016: int8, 1005: int2, 1007: int4, 1009: text, 1028: oid,
    199: json, 1021: float4, 1022: float8, 1014: bpchar, 1015: varchar, 1182: date, 1115: timestamp,
    1185: timestamptz, 1231: numeric, 2951: uuid, 3807: jsonb,
  ]
}

/// Converts text-format column values to `ColumnValue`s. Assumes the session
/// settings Sluice pins on its replication connection: DateStyle ISO,
/// TimeZone UTC, bytea_output hex, extra_float_digits 3.
public enum ValueDecoder {
  /// `arrayOfText` marks types known (from a Type message) to be arrays of a
  /// non-builtin type, such as an enum array.
  public static func decode(_ value: TupleValue, typeOID: UInt32, arrayOfText: Bool = false) -> ColumnValue {
    switch value {
    case .null: return .null
    case .unchangedToast: return .unchangedToast
    case .binary(let bytes): return .bytes(Array(bytes))
    case .text(let bytes):
      if let element = TypeOID.arrayElement[typeOID] {
        return ArrayLiteralParser.parse(bytes, element: element) ?? .text(String(decoding: bytes, as: UTF8.self))
      }
      if arrayOfText {
        return ArrayLiteralParser.parse(bytes, element: TypeOID.text) ?? .text(String(decoding: bytes, as: UTF8.self))
      }
      return scalar(bytes, typeOID: typeOID)
    }
  }

  public static func scalar(_ bytes: ArraySlice<UInt8>, typeOID: UInt32) -> ColumnValue {
    let text = String(decoding: bytes, as: UTF8.self)
    switch typeOID {
    case TypeOID.bool:
      return text == "t" ? .bool(true) : text == "f" ? .bool(false) : .text(text)
    case TypeOID.int2, TypeOID.int4, TypeOID.int8, TypeOID.oid:
      return Int64(text).map(ColumnValue.int) ?? .text(text)
    case TypeOID.float4, TypeOID.float8:
      switch text {
      case "NaN": return .float(.nan)
      case "Infinity": return .float(.infinity)
      case "-Infinity": return .float(-.infinity)
      default: return Double(text).map(ColumnValue.float) ?? .text(text)
      }
    case TypeOID.numeric: return .numeric(text)
    case TypeOID.uuid: return .uuid(text)
    case TypeOID.json, TypeOID.jsonb: return .json(text)
    case TypeOID.timestamptz: return .timestamp(isoTimestamp(text, withZone: true))
    case TypeOID.timestamp: return .timestamp(isoTimestamp(text, withZone: false))
    case TypeOID.date: return .date(text)
    case TypeOID.bytea: return hexBytes(bytes).map(ColumnValue.bytes) ?? .text(text)
    default: return .text(text)
    }
  }

  /// `2024-05-01 12:00:00.5+00` → `2024-05-01T12:00:00.5Z`;
  /// `+05:30` stays, `+05` becomes `+05:00`. `infinity` and BC dates are left as printed.
  static func isoTimestamp(_ text: String, withZone: Bool) -> String {
    guard text.utf8.count >= 19, !text.hasSuffix(" BC"), let space = text.firstIndex(of: " ") else { return text }
    var result = text
    result.replaceSubrange(space...space, with: "T")
    guard withZone else { return result }
    guard let sign = result.lastIndex(where: { $0 == "+" || $0 == "-" }), sign > space else { return result }
    let zone = result[result.index(after: sign)...]
    if zone == "00" { return String(result[..<sign]) + "Z" }
    if zone.count == 2 { return result + ":00" }
    return result
  }

  /// bytea's hex output: `\x` then two hex digits per byte.
  static func hexBytes(_ text: ArraySlice<UInt8>) -> [UInt8]? {
    guard text.count >= 2, text.count % 2 == 0, text.first == UInt8(ascii: "\\"),
      text[text.startIndex + 1] == UInt8(ascii: "x")
    else { return nil }
    var result: [UInt8] = []
    result.reserveCapacity((text.count - 2) / 2)
    var index = text.startIndex + 2
    while index < text.endIndex {
      guard let high = Hex.digit(text[index]), let low = Hex.digit(text[index + 1]) else { return nil }
      result.append(high << 4 | low)
      index += 2
    }
    return result
  }
}

/// Parses Postgres's array text format: `{1,2,NULL}`, `{"a b","c\"d"}`,
/// nested `{{1,2},{3,4}}`, with an optional `[1:2]=` bounds prefix.
enum ArrayLiteralParser {
  static func parse(_ bytes: ArraySlice<UInt8>, element: UInt32) -> ColumnValue? {
    var index = bytes.startIndex
    if bytes.first == UInt8(ascii: "[") {
      guard let equals = bytes.firstIndex(of: UInt8(ascii: "=")) else { return nil }
      index = equals + 1
    }
    guard let (value, end) = parseArray(bytes, at: index, element: element), end == bytes.endIndex else {
      return nil
    }
    return value
  }

  private static func parseArray(_ b: ArraySlice<UInt8>, at start: Int, element: UInt32) -> (ColumnValue, Int)? {
    guard start < b.endIndex, b[start] == UInt8(ascii: "{") else { return nil }
    var index = start + 1
    var items: [ColumnValue] = []
    if index < b.endIndex, b[index] == UInt8(ascii: "}") { return (.array([]), index + 1) }
    while index < b.endIndex {
      if b[index] == UInt8(ascii: "{") {
        guard let (nested, next) = parseArray(b, at: index, element: element) else { return nil }
        items.append(nested)
        index = next
      } else if b[index] == UInt8(ascii: "\"") {
        var text: [UInt8] = []
        index += 1
        while index < b.endIndex, b[index] != UInt8(ascii: "\"") {
          if b[index] == UInt8(ascii: "\\") { index += 1 }
          guard index < b.endIndex else { return nil }
          text.append(b[index])
          index += 1
        }
        guard index < b.endIndex else { return nil }
        index += 1
        items.append(ValueDecoder.scalar(text[...], typeOID: element))
      } else {
        let start = index
        while index < b.endIndex, b[index] != UInt8(ascii: ","), b[index] != UInt8(ascii: "}") { index += 1 }
        let raw = b[start..<index]
        if raw.elementsEqual("NULL".utf8) {
          items.append(.null)
        } else {
          items.append(ValueDecoder.scalar(raw, typeOID: element))
        }
      }
      guard index < b.endIndex else { return nil }
      if b[index] == UInt8(ascii: ",") {
        index += 1
      } else if b[index] == UInt8(ascii: "}") {
        return (.array(items), index + 1)
      } else {
        return nil
      }
    }
    return nil
  }
}
