/// Text compared as Postgres compares `text` for equality: byte by byte.
///
/// Swift's `String ==` uses Unicode canonical equivalence, so `"jose\u{301}"`
/// equals `"josé"` there, while Postgres (and every unique index) holds them
/// apart. Identities (actors, roles, types, ids, dedupe keys) are client
/// input: comparing them any other way than Postgres does would let one
/// client's value pass for another's.
public struct Bytewise: Hashable, Sendable, CustomStringConvertible {
  public let text: String

  public init(_ text: String) { self.text = text }

  public static func == (lhs: Bytewise, rhs: Bytewise) -> Bool { lhs.text.utf8.elementsEqual(rhs.text.utf8) }

  public func hash(into hasher: inout Hasher) {
    var copy = text
    copy.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    hasher.combine(0xFF as UInt8)  // never in UTF-8: ends the value
  }

  public var description: String { text }
}

extension String {
  /// Byte-wise equality, as Postgres compares text (see `Bytewise`).
  public func bytewiseEquals(_ other: String) -> Bool { utf8.elementsEqual(other.utf8) }
}

extension Optional where Wrapped == String {
  /// Byte-wise equality of optional text: nil equals only nil.
  public func bytewiseEquals(_ other: String?) -> Bool {
    switch (self, other) {
    case (nil, nil): true
    case (let a?, let b?): a.bytewiseEquals(b)
    default: false
    }
  }
}
