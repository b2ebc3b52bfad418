import SluiceCore

/// Builds pgoutput and CopyData bytes for tests, from fixed values: the
/// mirror image of `PgOutputDecoder`, written from the protocol docs.
enum PgOutputEncoder {
  static func encode(_ message: PgOutputMessage) -> [UInt8] {
    var w = ByteWriter()
    func xid(_ value: UInt32?) { if let value { w.write(value) } }
    switch message {
    case .begin(let m):
      w.write(UInt8(ascii: "B"))
      w.write(m.finalLSN)
      w.write(m.commitTime)
      w.write(m.xid)
    case .commit(let m):
      w.write(UInt8(ascii: "C"))
      w.write(m.flags)
      w.write(m.commitLSN)
      w.write(m.endLSN)
      w.write(m.commitTime)
    case .origin(let m):
      w.write(UInt8(ascii: "O"))
      w.write(m.commitLSN)
      w.writeCString(m.name)
    case .relation(let m):
      w.write(UInt8(ascii: "R"))
      xid(m.xid)
      w.write(m.relationID)
      w.writeCString(m.namespace)
      w.writeCString(m.name)
      w.write(m.replicaIdentity)
      w.write(Int16(m.columns.count))
      for column in m.columns {
        w.write(column.flags)
        w.writeCString(column.name)
        w.write(column.typeOID)
        w.write(column.typeModifier)
      }
    case .type(let m):
      w.write(UInt8(ascii: "Y"))
      xid(m.xid)
      w.write(m.typeOID)
      w.writeCString(m.namespace)
      w.writeCString(m.name)
    case .insert(let m):
      w.write(UInt8(ascii: "I"))
      xid(m.xid)
      w.write(m.relationID)
      w.write(UInt8(ascii: "N"))
      tuple(m.new, &w)
    case .update(let m):
      w.write(UInt8(ascii: "U"))
      xid(m.xid)
      w.write(m.relationID)
      oldTuples(m.oldKey, m.old, &w)
      w.write(UInt8(ascii: "N"))
      tuple(m.new, &w)
    case .delete(let m):
      w.write(UInt8(ascii: "D"))
      xid(m.xid)
      w.write(m.relationID)
      oldTuples(m.oldKey, m.old, &w)
    case .truncate(let m):
      w.write(UInt8(ascii: "T"))
      xid(m.xid)
      w.write(Int32(m.relationIDs.count))
      w.write(m.options)
      for id in m.relationIDs { w.write(id) }
    case .message(let m):
      w.write(UInt8(ascii: "M"))
      xid(m.xid)
      w.write(m.flags)
      w.write(m.lsn)
      w.writeCString(m.prefix)
      w.write(Int32(m.content.count))
      w.write(bytes: m.content)
    case .streamStart(let m):
      w.write(UInt8(ascii: "S"))
      w.write(m.xid)
      w.write(UInt8(m.firstSegment ? 1 : 0))
    case .streamStop:
      w.write(UInt8(ascii: "E"))
    case .streamCommit(let m):
      w.write(UInt8(ascii: "c"))
      w.write(m.xid)
      w.write(m.flags)
      w.write(m.commitLSN)
      w.write(m.endLSN)
      w.write(m.commitTime)
    case .streamAbort(let m):
      w.write(UInt8(ascii: "A"))
      w.write(m.xid)
      w.write(m.subtransactionXID)
    }
    return w.bytes
  }

  /// 'K' then the old key, or 'O' then the whole old row, as Update and Delete carry them.
  static func oldTuples(_ key: TupleData?, _ old: TupleData?, _ w: inout ByteWriter) {
    if let key {
      w.write(UInt8(ascii: "K"))
      tuple(key, &w)
    }
    if let old {
      w.write(UInt8(ascii: "O"))
      tuple(old, &w)
    }
  }

  static func tuple(_ tuple: TupleData, _ w: inout ByteWriter) {
    w.write(Int16(tuple.count))
    for value in tuple.values {
      switch value {
      case .null: w.write(UInt8(ascii: "n"))
      case .unchangedToast: w.write(UInt8(ascii: "u"))
      case .text(let bytes):
        w.write(UInt8(ascii: "t"))
        w.write(Int32(bytes.count))
        w.write(bytes: bytes)
      case .binary(let bytes):
        w.write(UInt8(ascii: "b"))
        w.write(Int32(bytes.count))
        w.write(bytes: bytes)
      }
    }
  }

  static func xLogData(start: LSN, end: LSN, sendTime: Int64, payload: [UInt8]) -> [UInt8] {
    var w = ByteWriter()
    w.write(UInt8(ascii: "w"))
    w.write(start)
    w.write(end)
    w.write(sendTime)
    w.write(bytes: payload)
    return w.bytes
  }

  static func keepalive(end: LSN, sendTime: Int64, reply: Bool) -> [UInt8] {
    var w = ByteWriter()
    w.write(UInt8(ascii: "k"))
    w.write(end)
    w.write(sendTime)
    w.write(UInt8(reply ? 1 : 0))
    return w.bytes
  }
}

/// Fixed fixtures: one of every message, plus the inside-a-stream variants.
enum Fixtures {
  static func text(_ string: String) -> TupleValue { .text(ArraySlice(Array(string.utf8))) }

  static let relation = Relation(
    relationID: 16_385, namespace: "game", name: "actions", replicaIdentity: UInt8(ascii: "d"),
    columns: [
      .init(flags: 1, name: "id", typeOID: TypeOID.uuid, typeModifier: -1),
      .init(flags: 0, name: "user_id", typeOID: TypeOID.text, typeModifier: -1),
      .init(flags: 0, name: "xp", typeOID: TypeOID.int4, typeModifier: -1),
      .init(flags: 0, name: "payload", typeOID: TypeOID.jsonb, typeModifier: -1),
    ])

  static let row = TupleData([
    text("6f1c1a52-0000-4000-8000-000000000001"), text("alice"), text("10"), text("{\"xp\": 10}"),
  ])
  static let keyRow = TupleData([text("6f1c1a52-0000-4000-8000-000000000001"), .null, .null, .null])
  static let toastRow = TupleData([
    text("6f1c1a52-0000-4000-8000-000000000001"), text("bob"), .binary([0, 1, 2]), .unchangedToast,
  ])

  /// Top-level messages (not inside a stream block).
  static let messages: [PgOutputMessage] = [
    .begin(Begin(finalLSN: LSN(0x1_0000_0100), commitTime: 785_000_000_000_000, xid: 731)),
    .commit(Commit(commitLSN: LSN(0x1_0000_0100), endLSN: LSN(0x1_0000_0130), commitTime: 785_000_000_000_000)),
    .origin(Origin(commitLSN: LSN(0x2A), name: "node_a")),
    .relation(relation),
    .type(TypeInfo(typeOID: 16_400, namespace: "game", name: "mood")),
    .insert(Insert(relationID: 16_385, new: row)),
    .update(Update(relationID: 16_385, new: row)),
    .update(Update(relationID: 16_385, oldKey: keyRow, new: row)),
    .update(Update(relationID: 16_385, old: row, new: toastRow)),
    .delete(Delete(relationID: 16_385, oldKey: keyRow)),
    .delete(Delete(relationID: 16_385, old: row)),
    .truncate(Truncate(options: 3, relationIDs: [16_385, 16_390])),
    .message(LogicalMessage(flags: 1, lsn: LSN(0x77), prefix: "sluice", content: Array("hello".utf8))),
    .streamStop,
    .streamCommit(
      StreamCommit(xid: 900, commitLSN: LSN(0x300), endLSN: LSN(0x330), commitTime: 785_000_000_000_001)),
    .streamAbort(StreamAbort(xid: 900, subtransactionXID: 901)),
  ]

  /// Messages as they appear between Stream Start and Stream Stop: with the xid first.
  static let streamed: [PgOutputMessage] = [
    .relation(
      Relation(
        xid: 900, relationID: 16_385, namespace: "game", name: "actions", replicaIdentity: UInt8(ascii: "f"),
        columns: relation.columns)),
    .type(TypeInfo(xid: 900, typeOID: 16_400, namespace: "game", name: "mood")),
    .insert(Insert(xid: 900, relationID: 16_385, new: row)),
    .update(Update(xid: 900, relationID: 16_385, old: row, new: row)),
    .delete(Delete(xid: 900, relationID: 16_385, old: row)),
    .truncate(Truncate(xid: 900, options: 0, relationIDs: [16_385])),
    .message(LogicalMessage(xid: 900, flags: 1, lsn: LSN(0x78), prefix: "p", content: [])),
  ]
}
