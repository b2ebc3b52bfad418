import Testing

@testable import SluiceCore

@Suite struct LSNTests {
  @Test func parsesAndFormats() {
    #expect(LSN("16/B374D848")?.value == 0x16_B374_D848)
    #expect(LSN("0/0") == .zero)
    #expect(LSN(0x16_B374_D848).description == "16/B374D848")
    #expect(LSN(0x1_0000_0000).description == "1/0")
    #expect(LSN("FFFFFFFF/FFFFFFFF")?.value == UInt64.max)
  }

  @Test(arguments: ["", "1", "/", "1/", "/1", "x/1", "1/1/1", "123456789/0", " 1/1", "-1/0"])
  func rejectsMalformed(_ text: String) {
    #expect(LSN(text) == nil)
  }

  @Test func ordersNumerically() {
    #expect(LSN("0/FFFFFFFF")! < LSN("1/0")!)
    #expect(LSN("A/0")! > LSN("9/FFFFFFFF")!)
    #expect([LSN(3), LSN(1), LSN(2)].sorted() == [LSN(1), LSN(2), LSN(3)])
  }
}

@Suite struct CopyDataTests {
  @Test func decodesXLogData() throws {
    let payload = PgOutputEncoder.encode(Fixtures.messages[0])
    let bytes = PgOutputEncoder.xLogData(start: LSN(0x100), end: LSN(0x200), sendTime: 42, payload: payload)
    guard case .xLogData(let data) = try ReplicationMessage.decode(bytes) else {
      Issue.record("not XLogData")
      return
    }
    #expect(data.walStart == LSN(0x100))
    #expect(data.walEnd == LSN(0x200))
    #expect(data.sendTime == 42)
    #expect(data.payloadOffset == 25)
    #expect(Array(data.payload) == payload)
  }

  @Test func decodesKeepalive() throws {
    let bytes = PgOutputEncoder.keepalive(end: LSN(0xABCDEF), sendTime: -7, reply: true)
    #expect(
      try ReplicationMessage.decode(bytes)
        == .keepalive(PrimaryKeepalive(walEnd: LSN(0xABCDEF), sendTime: -7, replyRequested: true)))
  }

  @Test func keepaliveTruncatedAtEveryOffsetThrows() {
    let bytes = PgOutputEncoder.keepalive(end: LSN(1), sendTime: 2, reply: false)
    for length in 0..<bytes.count {
      #expect(throws: DecodeError.self) { try ReplicationMessage.decode(Array(bytes[..<length])) }
    }
    #expect(throws: DecodeError.self) { try ReplicationMessage.decode(bytes + [0]) }
  }

  @Test func unknownTagNamesIt() {
    #expect(
      throws: DecodeError(message: "CopyData", field: "tag", offset: 1, problem: .invalid("unknown CopyData tag 0x7a"))
    ) {
      try ReplicationMessage.decode([UInt8(ascii: "z")])
    }
  }

  @Test func statusUpdateBytesAreExact() {
    let update = StandbyStatusUpdate(
      written: LSN(0x0102_0304_0506_0708), flushed: LSN(0x10), applied: LSN(0x20), clientTime: 0x0A0B,
      replyRequested: true)
    let expected: [UInt8] =
      [UInt8(ascii: "r")] + [1, 2, 3, 4, 5, 6, 7, 8] + [0, 0, 0, 0, 0, 0, 0, 0x10] + [0, 0, 0, 0, 0, 0, 0, 0x20]
      + [0, 0, 0, 0, 0, 0, 0x0A, 0x0B] + [1]
    #expect(update.encode() == expected)
    #expect(update.encode().count == 34)
    var noReply = update
    noReply.replyRequested = false
    #expect(noReply.encode().last == 0)
  }
}
