import Testing

@testable import SluiceCore

@Suite struct DecoderTests {
  @Test(arguments: Fixtures.messages.indices)
  func roundTripsEveryMessage(_ index: Int) throws {
    let message = Fixtures.messages[index]
    var decoder = PgOutputDecoder()
    #expect(try decoder.decode(PgOutputEncoder.encode(message)) == message)
  }

  @Test func decodesStreamedMessagesWithTheirXID() throws {
    var decoder = PgOutputDecoder()
    let start = PgOutputMessage.streamStart(StreamStart(xid: 900, firstSegment: true))
    #expect(try decoder.decode(PgOutputEncoder.encode(start)) == start)
    #expect(decoder.inStreamBlock)
    for message in Fixtures.streamed {
      #expect(try decoder.decode(PgOutputEncoder.encode(message)) == message)
    }
    #expect(try decoder.decode(PgOutputEncoder.encode(.streamStop)) == .streamStop)
    #expect(!decoder.inStreamBlock)
    // Outside the block the same insert has no xid.
    let plain = PgOutputMessage.insert(Insert(relationID: 16_385, new: Fixtures.row))
    #expect(try decoder.decode(PgOutputEncoder.encode(plain)) == plain)
  }

  @Test func relationFieldsAreDecoded() throws {
    var decoder = PgOutputDecoder()
    guard case .relation(let relation) = try decoder.decode(PgOutputEncoder.encode(.relation(Fixtures.relation)))
    else {
      Issue.record("not a relation")
      return
    }
    #expect(relation.xid == nil)
    #expect(relation.relationID == 16_385)
    #expect(relation.namespace == "game")
    #expect(relation.name == "actions")
    #expect(relation.qualifiedName == "game.actions")
    #expect(relation.replicaIdentity == UInt8(ascii: "d"))
    #expect(relation.columns.map(\.name) == ["id", "user_id", "xp", "payload"])
    #expect(relation.columns.map(\.typeOID) == [2950, 25, 23, 3802])
    #expect(relation.columns.map(\.isKey) == [true, false, false, false])
    #expect(relation.columns.allSatisfy { $0.typeModifier == -1 })
  }

  @Test func insertUpdateDeleteTuplesAreDecoded() throws {
    var decoder = PgOutputDecoder()
    guard
      case .insert(let insert) = try decoder.decode(
        PgOutputEncoder.encode(.insert(Insert(relationID: 7, new: Fixtures.row))))
    else {
      Issue.record("not an insert")
      return
    }
    #expect(insert.relationID == 7)
    #expect(insert.new.values == Fixtures.row.values)
    #expect(insert.new[1] == .text(ArraySlice(Array("alice".utf8))))

    let update = Update(relationID: 7, old: Fixtures.row, new: Fixtures.toastRow)
    guard case .update(let decoded) = try decoder.decode(PgOutputEncoder.encode(.update(update))) else {
      Issue.record("not an update")
      return
    }
    #expect(decoded.oldKey == nil)
    #expect(decoded.old == Fixtures.row)
    #expect(decoded.new[2] == .binary([0, 1, 2]))
    #expect(decoded.new[3] == .unchangedToast)

    guard
      case .delete(let delete) = try decoder.decode(
        PgOutputEncoder.encode(.delete(Delete(relationID: 7, oldKey: Fixtures.keyRow))))
    else {
      Issue.record("not a delete")
      return
    }
    #expect(delete.old == nil)
    #expect(delete.oldKey?[0] == Fixtures.keyRow[0])
    #expect(delete.oldKey?[1] == .null)
  }

  @Test func truncationAtEveryOffsetThrowsNeverTraps() {
    var all = Fixtures.messages.map { (PgOutputEncoder.encode($0), false) }
    all += Fixtures.streamed.map { (PgOutputEncoder.encode($0), true) }
    var count = 0
    for (bytes, streamed) in all {
      for length in 0..<bytes.count {
        var decoder = PgOutputDecoder()
        if streamed {
          _ = try? decoder.decode(PgOutputEncoder.encode(.streamStart(StreamStart(xid: 900, firstSegment: false))))
        }
        #expect(throws: DecodeError.self, "length \(length) of \(bytes.count)") {
          try decoder.decode(Array(bytes[..<length]))
        }
        count += 1
      }
    }
    #expect(count > 500)
  }

  @Test func leftoverBytesAreAnError() {
    for message in Fixtures.messages {
      var decoder = PgOutputDecoder()
      let bytes = PgOutputEncoder.encode(message) + [0xFF]
      #expect(throws: DecodeError.self) { try decoder.decode(bytes) }
      do {
        _ = try decoder.decode(bytes)
      } catch {
        #expect(error.problem == .leftoverBytes(1), "\(message.name)")
        #expect(error.offset == bytes.count - 1)
      }
    }
  }

  @Test func errorsNameMessageFieldAndOffset() {
    var decoder = PgOutputDecoder()
    // An Insert cut inside the second column's length.
    let bytes = PgOutputEncoder.encode(.insert(Insert(relationID: 1, new: Fixtures.row)))
    let cut = 1 + 4 + 1 + 2 + 1 + 4 + 36 + 1 + 2
    do {
      _ = try decoder.decode(Array(bytes[..<cut]))
      Issue.record("no error")
    } catch {
      #expect(error.message == "Insert")
      #expect(error.field == "new.length")
      #expect(error.offset == cut - 2)
      #expect(error.problem == .truncated(needed: 4, available: 2))
      #expect(error.description.contains("Insert.new.length at offset 50"))
    }
  }

  @Test func corruptValuesThrowTypedErrors() {
    var decoder = PgOutputDecoder()
    var w = ByteWriter()
    w.write(UInt8(ascii: "I"))
    w.write(UInt32(1))
    w.write(UInt8(ascii: "N"))
    w.write(Int16(1))
    w.write(UInt8(ascii: "t"))
    w.write(Int32(-5))
    #expect(
      throws: DecodeError(message: "Insert", field: "new.value", offset: 13, problem: .invalid("negative length -5"))
    ) {
      try decoder.decode(w.bytes)
    }
    // Unknown column kind, unknown message type, negative counts.
    #expect(throws: DecodeError.self) {
      try decoder.decode([UInt8(ascii: "I"), 0, 0, 0, 1, UInt8(ascii: "N"), 0, 1, UInt8(ascii: "x")])
    }
    #expect(throws: DecodeError.self) { try decoder.decode([UInt8(ascii: "Q")]) }
    #expect(throws: DecodeError.self) { try decoder.decode([UInt8(ascii: "T"), 0xFF, 0xFF, 0xFF, 0xFF, 0]) }
    // A huge relation count with no bytes behind it must not allocate or trap.
    #expect(throws: DecodeError.self) { try decoder.decode([UInt8(ascii: "T"), 0x7F, 0xFF, 0xFF, 0xFF, 0]) }
    #expect(throws: DecodeError.self) { try decoder.decode([UInt8(ascii: "U"), 0, 0, 0, 1, UInt8(ascii: "X")]) }
    #expect(throws: DecodeError.self) { try decoder.decode([UInt8(ascii: "D"), 0, 0, 0, 1, UInt8(ascii: "N")]) }
  }

  @Test func decodesAtAnOffsetInsideXLogData() throws {
    let payload = PgOutputEncoder.encode(Fixtures.messages[1])
    let bytes = PgOutputEncoder.xLogData(start: LSN(5), end: LSN(6), sendTime: 0, payload: payload)
    guard case .xLogData(let data) = try ReplicationMessage.decode(bytes) else {
      Issue.record("not XLogData")
      return
    }
    var decoder = PgOutputDecoder()
    #expect(try decoder.decode(data) == Fixtures.messages[1])
  }
}
