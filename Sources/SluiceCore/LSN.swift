/// A WAL position ("log sequence number"): 64 bits, written `X/X` with the
/// high and low 32 bits in upper-case hex, as Postgres prints it.
public struct LSN: Hashable, Comparable, Sendable, CustomStringConvertible {
  public var value: UInt64

  public init(_ value: UInt64) { self.value = value }

  public static let zero = LSN(0)

  /// Parses `16/B374D848`; returns nil for anything else.
  public init?(_ text: some StringProtocol) {
    let parts = text.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count == 2, (1...8).contains(parts[0].count), (1...8).contains(parts[1].count),
      let high = UInt32(parts[0], radix: 16), let low = UInt32(parts[1], radix: 16)
    else { return nil }
    self.value = UInt64(high) << 32 | UInt64(low)
  }

  public var description: String {
    String(UInt32(truncatingIfNeeded: value >> 32), radix: 16, uppercase: true) + "/"
      + String(UInt32(truncatingIfNeeded: value), radix: 16, uppercase: true)
  }

  public static func < (lhs: LSN, rhs: LSN) -> Bool { lhs.value < rhs.value }
}
