import Testing

@testable import SluiceCore

@Suite struct LedgerFilterTests {
  @Test func neverMissesAnInsertedValue() {
    var filter = LedgerFilter(expected: 10_000)
    for i in 0..<10_000 { filter.insert(.init("game.actions", "id-\(i)")) }
    for i in 0..<10_000 { #expect(filter.mayContain(.init("game.actions", "id-\(i)"))) }
  }

  @Test func falsePositivesStayNearOnePercentAtTenBitsPerValue() {
    var filter = LedgerFilter(expected: 20_000)
    for i in 0..<20_000 { filter.insert(.init("a", "\(i)")) }
    let positives = (0..<100_000).filter { filter.mayContain(.init("b", "\($0)")) }.count
    #expect(positives < 2_000, "\(positives) of 100,000 absent values looked present")
  }

  @Test func byteStringsAreComparedExactly() {
    var filter = LedgerFilter(expected: 10)
    filter.insert(.init("s", "jos\u{e9}"))
    #expect(filter.mayContain(.init("s", "jos\u{e9}")))
    #expect(!filter.mayContain(.init("s", "jose\u{301}")), "composed and decomposed are different ids")
    // The NUL between parts keeps ("ab", "c") apart from ("a", "bc").
    #expect(LedgerFilter.Digest("ab", "c") != LedgerFilter.Digest("a", "bc"))
  }

  @Test func storedFormRoundTripsAndRejectsDamage() throws {
    var filter = LedgerFilter(expected: 100)
    for i in 0..<100 { filter.insert(.init("x\(i)")) }
    let bytes = filter.bytes
    #expect(try LedgerFilter(bytes: bytes) == filter)
    #expect(throws: DecodeError.self) { try LedgerFilter(bytes: Array(bytes.dropLast())) }
    #expect(throws: DecodeError.self) { try LedgerFilter(bytes: [UInt8]("SLF1".utf8) + bytes.dropFirst(4)) }
    #expect(throws: DecodeError.self) { try LedgerFilter(bytes: []) }
  }

  private func event(_ id: String, source: String = "game.actions") -> Event {
    Event(source: source, id: id, type: "award_xp", actor: "u1", row: Row([]))
  }

  @Test func sealedLedgerAsksSealedPartitionsOnlyWhenAFilterMayHoldTheEvent() {
    var ids = LedgerFilter(expected: 10)
    ids.insert(SealedLedger.idDigest(source: "game.actions", ledgerID: "old"))
    var keys = LedgerFilter(expected: 10)
    keys.insert(SealedLedger.keyDigest(type: "award_xp", actor: "u1", key: "k1"))
    let empty = SealedLedger.Partition(part: 1, ids: LedgerFilter(expected: 1), keys: LedgerFilter(expected: 1))
    let sealed = SealedLedger(hotPart: 3, sealed: [empty, .init(part: 2, ids: ids, keys: keys)])
    #expect(sealed.mayHold(event("old")))
    #expect(sealed.holders(event("old")) == [2], "only the partition whose filter holds it")
    #expect(sealed.holders(event("new")) == [])
    #expect(!sealed.mayHold(event("new")))
    #expect(!sealed.mayHold(event("old", source: "shop.orders")), "the source is part of the key")
    #expect(sealed.mayOwn(type: "award_xp", actor: "u1", key: "k1"))
    #expect(!sealed.mayOwn(type: "award_xp", actor: "u2", key: "k1"))
    // Ids the ledger stores as digests are always looked up.
    #expect(sealed.mayHold(event("sha256:abc")))
    #expect(sealed.mayHold(event("sluice:null-id@0/1")))
    #expect(sealed.mayHold(event(String(repeating: "x", count: 1025))))
    #expect(sealed.holders(event("sha256:abc")) == nil, "any sealed partition")
  }

  @Test func aSealedPartitionWithoutFiltersMakesEveryAnswerMaybe() {
    let sealed = SealedLedger(
      hotPart: 2, sealed: [.init(part: 0, ids: LedgerFilter(expected: 1), keys: LedgerFilter(expected: 1)), nil])
    #expect(!sealed.complete)
    #expect(sealed.mayHold(event("anything")))
    #expect(sealed.mayOwn(type: "t", actor: "a", key: "k"))
    #expect(sealed.holders(event("anything")) == nil)
    #expect(SealedLedger.unknown.mayHold(event("anything")))
  }

  @Test func noSealedPartitionsMeansNothingIsThere() {
    let sealed = SealedLedger(hotPart: 0, sealed: [])
    #expect(!sealed.mayHold(event("x")))
    #expect(!sealed.mayOwn(type: "t", actor: "a", key: "k"))
  }
}
