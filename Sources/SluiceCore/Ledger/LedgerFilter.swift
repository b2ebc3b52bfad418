/// A blocked Bloom filter over byte strings: `mayContain` is false only for
/// values never inserted, and true for about 1% of the others at 10 bits per
/// value. Each value's bits lie in one 512-bit block (one cache line), so a
/// lookup costs one memory access per filter, however big it is.
/// The daemon keeps one per sealed ledger partition for its ids and one for
/// its owned dedupe keys, so an event is looked up in sealed partitions only
/// when one of them may hold it (docs/ledger.md).
///
/// Stored form (`bytes`): "SLB1", the probe count (1 byte), the bit count
/// (8 bytes, big-endian, a multiple of 512), then the bits as big-endian
/// 64-bit words. Hashes are FNV-1a 64 of the value (its parts joined by NUL)
/// with two seeds, finished by MurmurHash3's fmix64: h1 picks the block,
/// and probe i sets bit (h2 >> 9i) mod 512 of it.
public struct LedgerFilter: Sendable, Equatable {
  public private(set) var bitCount: UInt64
  public private(set) var probes: Int
  private var words: [UInt64]

  static let magic: [UInt8] = Array("SLB1".utf8)
  static let blockBits: UInt64 = 512

  /// A filter sized for `expected` values at `bitsPerValue` bits each.
  public init(expected: Int, bitsPerValue: Int = 10) {
    let bits = UInt64(max(1, expected) * bitsPerValue)
    bitCount = max(1, (bits + Self.blockBits - 1) / Self.blockBits) * Self.blockBits
    // k = bits per value · ln 2, rounded (7 at 10 bits); at most 7 probes of 9 bits fit in h2.
    probes = max(1, min(7, Int((Double(bitsPerValue) * 0.693).rounded())))
    words = [UInt64](repeating: 0, count: Int(bitCount / 64))
  }

  /// A value's two hashes, computed once and tested against any number of
  /// filters. The value is its parts joined by NUL bytes (no copy is made).
  public struct Digest: Sendable, Equatable {
    var h1: UInt64
    var h2: UInt64

    public init(_ parts: String...) {
      var a: UInt64 = 0xcbf2_9ce4_8422_2325
      var b: UInt64 = 0x8422_2325_cbf2_9ce4
      for (index, part) in parts.enumerated() {
        if index > 0 {
          a = a &* 0x0000_0100_0000_01b3
          b = b &* 0x0000_0100_0000_01b3
        }
        for byte in part.utf8 {
          a = (a ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
          b = (b ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
      }
      h1 = LedgerFilter.fmix(a)
      h2 = LedgerFilter.fmix(b) | 1
    }
  }

  public mutating func insert(_ digest: Digest) {
    let block = Int(digest.h1 % (bitCount / Self.blockBits)) * 8
    for i in 0..<probes {
      let bit = Int((digest.h2 >> UInt64(9 * i)) & 511)
      words[block + bit / 64] |= 1 << UInt64(bit % 64)
    }
  }

  public func mayContain(_ digest: Digest) -> Bool {
    let block = Int(digest.h1 % (bitCount / Self.blockBits)) * 8
    for i in 0..<probes {
      let bit = Int((digest.h2 >> UInt64(9 * i)) & 511)
      if words[block + bit / 64] & (1 << UInt64(bit % 64)) == 0 { return false }
    }
    return true
  }

  public var bytes: [UInt8] {
    var out = Self.magic
    out.reserveCapacity(13 + words.count * 8)
    out.append(UInt8(probes))
    for shift in stride(from: 56, through: 0, by: -8) {
      out.append(UInt8(truncatingIfNeeded: bitCount >> UInt64(shift)))
    }
    for word in words {
      for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
    }
    return out
  }

  public struct Malformed: Error, CustomStringConvertible {
    public var description: String
  }

  /// Reads the stored form; throws on anything else (a truncated or foreign value).
  public init(bytes: [UInt8]) throws(DecodeError) {
    var reader = ByteReader(bytes, context: "ledger filter")
    guard try reader.readBytes(4, "magic") == Self.magic else { throw reader.error("magic", .invalid("not SLF1")) }
    probes = Int(try reader.readUInt8("probes"))
    bitCount = try reader.readUInt64("bit count")
    guard (1...7).contains(probes), bitCount >= Self.blockBits, bitCount % Self.blockBits == 0,
      reader.remaining % 8 == 0, bitCount / 64 == UInt64(reader.remaining / 8)
    else { throw reader.error("bits", .invalid("header does not match the length")) }
    var words: [UInt64] = []
    words.reserveCapacity(reader.remaining / 8)
    while reader.remaining > 0 { words.append(try reader.readUInt64("bits")) }
    self.words = words
  }

  static func fmix(_ value: UInt64) -> UInt64 {
    var k = value
    k ^= k >> 33
    k &*= 0xff51_afd7_ed55_8ccd
    k ^= k >> 33
    k &*= 0xc4ce_b9fe_1a85_ec53
    k ^= k >> 33
    return k
  }
}

/// The sealed partitions of the ledger as the daemon knows them: which
/// events and dedupe keys they may hold. Complete only when every sealed
/// partition has its filters; until then every question answers "maybe".
public struct SealedLedger: Sendable {
  /// One sealed partition's filters.
  public struct Partition: Sendable {
    public var part: Int
    public var ids: LedgerFilter
    public var keys: LedgerFilter
    public init(part: Int, ids: LedgerFilter, keys: LedgerFilter) {
      self.part = part
      self.ids = ids
      self.keys = keys
    }
  }

  /// The newest partition this process knows of; lookups cleared by the
  /// filters probe it and any newer one.
  public private(set) var hotPart: Int
  public private(set) var complete: Bool
  private var partitions: [Partition]

  /// `sealed`: each sealed partition's filters, nil where it has none (then
  /// every answer is "maybe, anywhere").
  public init(hotPart: Int, sealed: [Partition?]) {
    self.hotPart = hotPart
    complete = sealed.allSatisfy { $0 != nil }
    partitions = sealed.compactMap { $0 }
  }

  /// Knows nothing: every lookup goes to every partition (no partition
  /// number is beyond this one).
  public static let unknown = SealedLedger(hotPart: Int(Int32.max), sealed: [nil])

  /// What a ledger id is filed under: source, NUL, id as stored.
  public static func idDigest(source: String, ledgerID: String) -> LedgerFilter.Digest {
    LedgerFilter.Digest(source, ledgerID)
  }

  /// What an owned dedupe key is filed under: type, NUL, actor, NUL, key.
  public static func keyDigest(type: String, actor: String, key: String) -> LedgerFilter.Digest {
    LedgerFilter.Digest(type, actor, key)
  }

  /// The sealed partitions that may hold this event, or nil for "any of
  /// them" (filters missing, or an id the ledger stores as a digest: over
  /// 1,024 bytes, or starting with `sha256:` / `sluice:`; the filters hold
  /// the digest, not the id).
  public func holders(_ event: Event) -> [Int]? {
    guard complete else { return nil }
    if !event.idIsSynthetic
      && (event.id.utf8.count > EventLimits.maxFieldBytes || event.id.hasPrefix("sha256:")
        || event.id.hasPrefix("sluice:"))
    {
      return nil
    }
    let digest = Self.idDigest(source: event.source, ledgerID: event.id)
    return partitions.lazy.filter { $0.ids.mayContain(digest) }.map(\.part)
  }

  /// Whether a sealed partition may hold this event.
  public func mayHold(_ event: Event) -> Bool {
    holders(event).map { !$0.isEmpty } ?? true
  }

  /// Whether a sealed partition may hold an owner of this dedupe key.
  public func mayOwn(type: String, actor: String, key: String) -> Bool {
    guard complete else { return true }
    let digest = Self.keyDigest(type: type, actor: actor, key: key)
    return partitions.contains { $0.keys.mayContain(digest) }
  }
}
