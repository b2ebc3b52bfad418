/// Why a message could not be decoded: which message, which field, at which
/// byte offset of the message, and what was wrong there.
public struct DecodeError: Error, Equatable, Sendable, CustomStringConvertible {
  public enum Problem: Equatable, Sendable {
    /// The field needs `needed` bytes; only `available` are left.
    case truncated(needed: Int, available: Int)
    /// The bytes are there but mean nothing valid (unknown tag, negative length…).
    case invalid(String)
    /// The message decoded completely and bytes were left over.
    case leftoverBytes(Int)
  }

  public var message: String
  public var field: String
  public var offset: Int
  public var problem: Problem

  public init(message: String, field: String, offset: Int, problem: Problem) {
    self.message = message
    self.field = field
    self.offset = offset
    self.problem = problem
  }

  public var description: String {
    switch problem {
    case .truncated(let needed, let available):
      return "\(message).\(field) at offset \(offset): truncated, needs \(needed) bytes, \(available) left"
    case .invalid(let why):
      return "\(message).\(field) at offset \(offset): \(why)"
    case .leftoverBytes(let count):
      return "\(message) at offset \(offset): \(count) bytes left over after the last field"
    }
  }
}

/// A bounds-checked big-endian reader. Every read names its field so that a
/// short or corrupt message throws a `DecodeError` instead of trapping.
public struct ByteReader {
  public let bytes: [UInt8]
  /// Offset of the message's first byte in `bytes`; errors report offsets from here.
  public let base: Int
  public private(set) var position: Int
  /// The message being decoded, for error reports.
  public var context: String

  public init(_ bytes: [UInt8], from start: Int = 0, context: String = "message") {
    self.bytes = bytes
    self.base = start
    self.position = start
    self.context = context
  }

  public var remaining: Int { bytes.count - position }
  public var offset: Int { position - base }

  public func error(_ field: String, _ problem: DecodeError.Problem) -> DecodeError {
    DecodeError(message: context, field: field, offset: offset, problem: problem)
  }

  @inline(__always)
  private func need(_ count: Int, _ field: String) throws(DecodeError) {
    if remaining < count {
      throw error(field, .truncated(needed: count, available: remaining))
    }
  }

  public mutating func readUInt8(_ field: String) throws(DecodeError) -> UInt8 {
    try need(1, field)
    defer { position += 1 }
    return bytes[position]
  }

  public mutating func readUInt16(_ field: String) throws(DecodeError) -> UInt16 {
    try need(2, field)
    defer { position += 2 }
    return UInt16(bytes[position]) << 8 | UInt16(bytes[position + 1])
  }

  public mutating func readUInt32(_ field: String) throws(DecodeError) -> UInt32 {
    try need(4, field)
    var value: UInt32 = 0
    for index in position..<position + 4 { value = value << 8 | UInt32(bytes[index]) }
    position += 4
    return value
  }

  public mutating func readUInt64(_ field: String) throws(DecodeError) -> UInt64 {
    try need(8, field)
    var value: UInt64 = 0
    for index in position..<position + 8 { value = value << 8 | UInt64(bytes[index]) }
    position += 8
    return value
  }

  public mutating func readInt16(_ field: String) throws(DecodeError) -> Int16 {
    Int16(bitPattern: try readUInt16(field))
  }

  public mutating func readInt32(_ field: String) throws(DecodeError) -> Int32 {
    Int32(bitPattern: try readUInt32(field))
  }

  public mutating func readInt64(_ field: String) throws(DecodeError) -> Int64 {
    Int64(bitPattern: try readUInt64(field))
  }

  public mutating func readLSN(_ field: String) throws(DecodeError) -> LSN {
    LSN(try readUInt64(field))
  }

  /// A NUL-terminated UTF-8 string; the terminator is consumed.
  public mutating func readCString(_ field: String) throws(DecodeError) -> String {
    guard let end = bytes[position...].firstIndex(of: 0) else {
      throw error(field, .truncated(needed: remaining + 1, available: remaining))
    }
    defer { position = end + 1 }
    return String(decoding: bytes[position..<end], as: UTF8.self)
  }

  /// The range of the next `count` bytes, consumed without copying.
  public mutating func readRange(_ count: Int, _ field: String) throws(DecodeError) -> Range<Int> {
    guard count >= 0 else { throw error(field, .invalid("negative length \(count)")) }
    try need(count, field)
    defer { position += count }
    return position..<position + count
  }

  public mutating func readBytes(_ count: Int, _ field: String) throws(DecodeError) -> [UInt8] {
    Array(bytes[try readRange(count, field)])
  }

  /// Throws unless every byte was consumed.
  public func expectEnd() throws(DecodeError) {
    if remaining != 0 {
      throw DecodeError(message: context, field: "", offset: offset, problem: .leftoverBytes(remaining))
    }
  }
}

/// Big-endian writer, the mirror of `ByteReader` (status updates, tests).
public struct ByteWriter {
  public private(set) var bytes: [UInt8] = []

  public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

  public mutating func write(_ value: UInt8) { bytes.append(value) }
  public mutating func write(_ value: UInt16) { writeBigEndian(UInt64(value), 2) }
  public mutating func write(_ value: UInt32) { writeBigEndian(UInt64(value), 4) }
  public mutating func write(_ value: UInt64) { writeBigEndian(value, 8) }
  public mutating func write(_ value: Int16) { write(UInt16(bitPattern: value)) }
  public mutating func write(_ value: Int32) { write(UInt32(bitPattern: value)) }
  public mutating func write(_ value: Int64) { write(UInt64(bitPattern: value)) }
  public mutating func write(_ value: LSN) { write(value.value) }
  public mutating func write(bytes more: some Sequence<UInt8>) { bytes.append(contentsOf: more) }
  public mutating func writeCString(_ text: String) {
    bytes.append(contentsOf: text.utf8)
    bytes.append(0)
  }

  private mutating func writeBigEndian(_ value: UInt64, _ width: Int) {
    for shift in stride(from: (width - 1) * 8, through: 0, by: -8) {
      bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
    }
  }
}
