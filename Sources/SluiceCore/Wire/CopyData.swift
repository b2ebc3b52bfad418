/// Messages inside the CopyBoth stream of a replication connection
/// ("Streaming Replication Protocol" in the Postgres docs).
public enum ReplicationMessage: Equatable, Sendable {
  case xLogData(XLogData)
  case keepalive(PrimaryKeepalive)

  /// Decodes one CopyData payload received from the server.
  public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> ReplicationMessage {
    var reader = ByteReader(bytes, context: "CopyData")
    let tag = try reader.readUInt8("tag")
    switch tag {
    case UInt8(ascii: "w"):
      reader.context = "XLogData"
      // Byte1('w') Int64 start of the WAL data, Int64 current end of WAL on
      // the server, Int64 server clock at send time, Byten the WAL data.
      let start = try reader.readLSN("walStart")
      let end = try reader.readLSN("walEnd")
      let sendTime = try reader.readInt64("sendTime")
      return .xLogData(
        XLogData(walStart: start, walEnd: end, sendTime: sendTime, bytes: bytes, payloadOffset: reader.position))
    case UInt8(ascii: "k"):
      reader.context = "PrimaryKeepalive"
      // Byte1('k') Int64 current end of WAL, Int64 server clock, Byte1 1 if
      // the client should reply immediately to avoid a timeout disconnect.
      let end = try reader.readLSN("walEnd")
      let sendTime = try reader.readInt64("sendTime")
      let reply = try reader.readUInt8("replyRequested")
      try reader.expectEnd()
      return .keepalive(PrimaryKeepalive(walEnd: end, sendTime: sendTime, replyRequested: reply != 0))
    default:
      throw reader.error("tag", .invalid("unknown CopyData tag 0x\(String(tag, radix: 16))"))
    }
  }
}

/// `w`: a chunk of WAL data; for logical replication, one pgoutput message.
public struct XLogData: Equatable, Sendable {
  public var walStart: LSN
  public var walEnd: LSN
  public var sendTime: Int64
  /// The whole CopyData buffer; the pgoutput message starts at `payloadOffset`.
  public var bytes: [UInt8]
  public var payloadOffset: Int

  public init(walStart: LSN, walEnd: LSN, sendTime: Int64, bytes: [UInt8], payloadOffset: Int) {
    self.walStart = walStart
    self.walEnd = walEnd
    self.sendTime = sendTime
    self.bytes = bytes
    self.payloadOffset = payloadOffset
  }

  public var payload: ArraySlice<UInt8> { bytes[payloadOffset...] }
}

/// `k`: the server's heartbeat.
public struct PrimaryKeepalive: Equatable, Sendable {
  public var walEnd: LSN
  public var sendTime: Int64
  public var replyRequested: Bool

  public init(walEnd: LSN, sendTime: Int64, replyRequested: Bool) {
    self.walEnd = walEnd
    self.sendTime = sendTime
    self.replyRequested = replyRequested
  }
}

/// `r`: the client's report of how far it has written, flushed and applied.
/// For a logical slot the flush position becomes `confirmed_flush_lsn`.
public struct StandbyStatusUpdate: Equatable, Sendable {
  public var written: LSN
  public var flushed: LSN
  public var applied: LSN
  /// Microseconds since 2000-01-01 00:00 UTC.
  public var clientTime: Int64
  public var replyRequested: Bool

  public init(written: LSN, flushed: LSN, applied: LSN, clientTime: Int64, replyRequested: Bool = false) {
    self.written = written
    self.flushed = flushed
    self.applied = applied
    self.clientTime = clientTime
    self.replyRequested = replyRequested
  }

  public func encode() -> [UInt8] {
    var writer = ByteWriter(capacity: 34)
    writer.write(UInt8(ascii: "r"))
    writer.write(written)
    writer.write(flushed)
    writer.write(applied)
    writer.write(clientTime)
    writer.write(UInt8(replyRequested ? 1 : 0))
    return writer.bytes
  }
}
