/// Decodes pgoutput messages: one decode per message, one dispatch on the
/// type byte. Leftover bytes are an error, and so is anything truncated.
///
/// The decoder keeps one bit of state: whether it is inside a streamed
/// transaction block (Stream Start … Stream Stop), where the change messages
/// carry the transaction's xid before their other fields.
public struct PgOutputDecoder: Sendable {
  public private(set) var inStreamBlock = false

  public init() {}

  /// Forgets the stream state, as after a reconnect.
  public mutating func reset() { inStreamBlock = false }

  public mutating func decode(_ xLogData: XLogData) throws(DecodeError) -> PgOutputMessage {
    try decode(xLogData.bytes, from: xLogData.payloadOffset)
  }

  public mutating func decode(_ bytes: [UInt8], from start: Int = 0) throws(DecodeError) -> PgOutputMessage {
    var reader = ByteReader(bytes, from: start, context: "pgoutput")
    let tag = try reader.readUInt8("tag")
    let message: PgOutputMessage
    switch tag {
    case UInt8(ascii: "B"): message = .begin(try Self.begin(&reader))
    case UInt8(ascii: "C"): message = .commit(try Self.commit(&reader))
    case UInt8(ascii: "O"): message = .origin(try Self.origin(&reader))
    case UInt8(ascii: "R"): message = .relation(try relation(&reader))
    case UInt8(ascii: "Y"): message = .type(try type(&reader))
    case UInt8(ascii: "I"): message = .insert(try insert(&reader))
    case UInt8(ascii: "U"): message = .update(try update(&reader))
    case UInt8(ascii: "D"): message = .delete(try delete(&reader))
    case UInt8(ascii: "T"): message = .truncate(try truncate(&reader))
    case UInt8(ascii: "M"): message = .message(try logicalMessage(&reader))
    case UInt8(ascii: "S"):
      message = .streamStart(try Self.streamStart(&reader))
      inStreamBlock = true
    case UInt8(ascii: "E"):
      reader.context = "StreamStop"
      message = .streamStop
      inStreamBlock = false
    case UInt8(ascii: "c"): message = .streamCommit(try Self.streamCommit(&reader))
    case UInt8(ascii: "A"): message = .streamAbort(try Self.streamAbort(&reader))
    default:
      throw reader.error("tag", .invalid("unknown pgoutput message type 0x\(String(tag, radix: 16))"))
    }
    try reader.expectEnd()
    return message
  }

  // MARK: - One decode per message

  private static func begin(_ r: inout ByteReader) throws(DecodeError) -> Begin {
    r.context = "Begin"
    return Begin(
      finalLSN: try r.readLSN("finalLSN"), commitTime: try r.readInt64("commitTime"), xid: try r.readUInt32("xid"))
  }

  private static func commit(_ r: inout ByteReader) throws(DecodeError) -> Commit {
    r.context = "Commit"
    return Commit(
      flags: try r.readUInt8("flags"), commitLSN: try r.readLSN("commitLSN"), endLSN: try r.readLSN("endLSN"),
      commitTime: try r.readInt64("commitTime"))
  }

  private static func origin(_ r: inout ByteReader) throws(DecodeError) -> Origin {
    r.context = "Origin"
    return Origin(commitLSN: try r.readLSN("commitLSN"), name: try r.readCString("name"))
  }

  /// "Xid of the transaction (only present for streamed transactions)."
  private func streamXID(_ r: inout ByteReader) throws(DecodeError) -> UInt32? {
    inStreamBlock ? try r.readUInt32("xid") : nil
  }

  private func relation(_ r: inout ByteReader) throws(DecodeError) -> Relation {
    r.context = "Relation"
    let xid = try streamXID(&r)
    let relationID = try r.readUInt32("relationID")
    let namespace = try r.readCString("namespace")
    let name = try r.readCString("name")
    let identity = try r.readUInt8("replicaIdentity")
    let count = try r.readInt16("columnCount")
    guard count >= 0 else { throw r.error("columnCount", .invalid("negative column count \(count)")) }
    var columns: [Relation.Column] = []
    columns.reserveCapacity(Int(count))
    for _ in 0..<count {
      columns.append(
        Relation.Column(
          flags: try r.readUInt8("column.flags"), name: try r.readCString("column.name"),
          typeOID: try r.readUInt32("column.typeOID"), typeModifier: try r.readInt32("column.typeModifier")))
    }
    return Relation(
      xid: xid, relationID: relationID, namespace: namespace, name: name, replicaIdentity: identity,
      columns: columns)
  }

  private func type(_ r: inout ByteReader) throws(DecodeError) -> TypeInfo {
    r.context = "Type"
    return TypeInfo(
      xid: try streamXID(&r), typeOID: try r.readUInt32("typeOID"), namespace: try r.readCString("namespace"),
      name: try r.readCString("name"))
  }

  private func insert(_ r: inout ByteReader) throws(DecodeError) -> Insert {
    r.context = "Insert"
    let xid = try streamXID(&r)
    let relationID = try r.readUInt32("relationID")
    try Self.expectTag(&r, UInt8(ascii: "N"), "newTupleTag")
    return Insert(xid: xid, relationID: relationID, new: try Self.tuple(&r, "new"))
  }

  private func update(_ r: inout ByteReader) throws(DecodeError) -> Update {
    r.context = "Update"
    var update = Update(xid: try streamXID(&r), relationID: try r.readUInt32("relationID"), new: TupleData([]))
    var tag = try r.readUInt8("tupleTag")
    if tag == UInt8(ascii: "K") {
      update.oldKey = try Self.tuple(&r, "oldKey")
      tag = try r.readUInt8("newTupleTag")
    } else if tag == UInt8(ascii: "O") {
      update.old = try Self.tuple(&r, "old")
      tag = try r.readUInt8("newTupleTag")
    }
    guard tag == UInt8(ascii: "N") else {
      throw DecodeError(
        message: "Update", field: "newTupleTag", offset: r.offset - 1,
        problem: .invalid("expected 'N', got 0x\(String(tag, radix: 16))"))
    }
    update.new = try Self.tuple(&r, "new")
    return update
  }

  private func delete(_ r: inout ByteReader) throws(DecodeError) -> Delete {
    r.context = "Delete"
    var delete = Delete(xid: try streamXID(&r), relationID: try r.readUInt32("relationID"))
    let tag = try r.readUInt8("tupleTag")
    switch tag {
    case UInt8(ascii: "K"): delete.oldKey = try Self.tuple(&r, "oldKey")
    case UInt8(ascii: "O"): delete.old = try Self.tuple(&r, "old")
    default:
      throw DecodeError(
        message: "Delete", field: "tupleTag", offset: r.offset - 1,
        problem: .invalid("expected 'K' or 'O', got 0x\(String(tag, radix: 16))"))
    }
    return delete
  }

  private func truncate(_ r: inout ByteReader) throws(DecodeError) -> Truncate {
    r.context = "Truncate"
    let xid = try streamXID(&r)
    let count = try r.readInt32("relationCount")
    guard count >= 0 else { throw r.error("relationCount", .invalid("negative relation count \(count)")) }
    let options = try r.readUInt8("options")
    // Each relation id is 4 bytes: check the total before reserving memory for it.
    guard Int(count) * 4 <= r.remaining else {
      throw r.error("relationIDs", .truncated(needed: Int(count) * 4, available: r.remaining))
    }
    var ids: [UInt32] = []
    ids.reserveCapacity(Int(count))
    for _ in 0..<count { ids.append(try r.readUInt32("relationID")) }
    return Truncate(xid: xid, options: options, relationIDs: ids)
  }

  private func logicalMessage(_ r: inout ByteReader) throws(DecodeError) -> LogicalMessage {
    r.context = "Message"
    let xid = try streamXID(&r)
    let flags = try r.readUInt8("flags")
    let lsn = try r.readLSN("lsn")
    let prefix = try r.readCString("prefix")
    let length = try r.readInt32("contentLength")
    let content = try r.readBytes(Int(length), "content")
    return LogicalMessage(xid: xid, flags: flags, lsn: lsn, prefix: prefix, content: content)
  }

  private static func streamStart(_ r: inout ByteReader) throws(DecodeError) -> StreamStart {
    r.context = "StreamStart"
    return StreamStart(xid: try r.readUInt32("xid"), firstSegment: try r.readUInt8("firstSegment") == 1)
  }

  private static func streamCommit(_ r: inout ByteReader) throws(DecodeError) -> StreamCommit {
    r.context = "StreamCommit"
    return StreamCommit(
      xid: try r.readUInt32("xid"), flags: try r.readUInt8("flags"), commitLSN: try r.readLSN("commitLSN"),
      endLSN: try r.readLSN("endLSN"), commitTime: try r.readInt64("commitTime"))
  }

  private static func streamAbort(_ r: inout ByteReader) throws(DecodeError) -> StreamAbort {
    r.context = "StreamAbort"
    return StreamAbort(xid: try r.readUInt32("xid"), subtransactionXID: try r.readUInt32("subtransactionXID"))
  }

  // MARK: - TupleData

  private static func expectTag(_ r: inout ByteReader, _ expected: UInt8, _ field: String) throws(DecodeError) {
    let tag = try r.readUInt8(field)
    guard tag == expected else {
      throw DecodeError(
        message: r.context, field: field, offset: r.offset - 1,
        problem: .invalid("expected '\(Character(Unicode.Scalar(expected)))', got 0x\(String(tag, radix: 16))"))
    }
  }

  /// Int16 number of columns, then per column a kind byte ('n', 'u', 't',
  /// 'b') and, for 't' and 'b', Int32 length and the value's bytes.
  private static func tuple(_ r: inout ByteReader, _ field: String) throws(DecodeError) -> TupleData {
    let count = try r.readInt16("\(field).columnCount")
    guard count >= 0 else { throw r.error("\(field).columnCount", .invalid("negative column count \(count)")) }
    var columns: [TupleData.Column] = []
    columns.reserveCapacity(Int(count))
    for _ in 0..<count {
      let tag = try r.readUInt8("\(field).kind")
      guard let kind = TupleData.Kind(rawValue: tag) else {
        throw DecodeError(
          message: r.context, field: "\(field).kind", offset: r.offset - 1,
          problem: .invalid("unknown column kind 0x\(String(tag, radix: 16))"))
      }
      switch kind {
      case .null, .unchangedToast:
        columns.append(TupleData.Column(kind: kind, range: r.position..<r.position))
      case .text, .binary:
        let length = try r.readInt32("\(field).length")
        columns.append(TupleData.Column(kind: kind, range: try r.readRange(Int(length), "\(field).value")))
      }
    }
    return TupleData(buffer: r.bytes, columns: columns)
  }
}
