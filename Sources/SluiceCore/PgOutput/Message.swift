/// Every message of the pgoutput logical replication protocol, versions 1 and
/// 2 (streaming of in-progress transactions). Field comments quote
/// "Logical Replication Message Formats" in the Postgres docs.
public enum PgOutputMessage: Equatable, Sendable {
  case begin(Begin)
  case commit(Commit)
  case origin(Origin)
  case relation(Relation)
  case type(TypeInfo)
  case insert(Insert)
  case update(Update)
  case delete(Delete)
  case truncate(Truncate)
  case message(LogicalMessage)
  case streamStart(StreamStart)
  case streamStop
  case streamCommit(StreamCommit)
  case streamAbort(StreamAbort)

  public var name: String {
    switch self {
    case .begin: "Begin"
    case .commit: "Commit"
    case .origin: "Origin"
    case .relation: "Relation"
    case .type: "Type"
    case .insert: "Insert"
    case .update: "Update"
    case .delete: "Delete"
    case .truncate: "Truncate"
    case .message: "Message"
    case .streamStart: "StreamStart"
    case .streamStop: "StreamStop"
    case .streamCommit: "StreamCommit"
    case .streamAbort: "StreamAbort"
    }
  }
}

/// Microseconds since 2000-01-01 00:00 UTC, Postgres's epoch.
public typealias PostgresTimestamp = Int64

/// 'B'
public struct Begin: Equatable, Sendable {
  /// "The final LSN of the transaction" (its commit record).
  public var finalLSN: LSN
  /// "Commit timestamp of the transaction."
  public var commitTime: PostgresTimestamp
  public var xid: UInt32

  public init(finalLSN: LSN, commitTime: PostgresTimestamp, xid: UInt32) {
    self.finalLSN = finalLSN
    self.commitTime = commitTime
    self.xid = xid
  }
}

/// 'C'
public struct Commit: Equatable, Sendable {
  /// "Flags; currently unused."
  public var flags: UInt8
  /// "The LSN of the commit."
  public var commitLSN: LSN
  /// "The end LSN of the transaction." This is what a consumer confirms.
  public var endLSN: LSN
  public var commitTime: PostgresTimestamp

  public init(flags: UInt8 = 0, commitLSN: LSN, endLSN: LSN, commitTime: PostgresTimestamp) {
    self.flags = flags
    self.commitLSN = commitLSN
    self.endLSN = endLSN
    self.commitTime = commitTime
  }
}

/// 'O': the transaction was replayed from another node.
public struct Origin: Equatable, Sendable {
  /// "The LSN of the commit on the origin server."
  public var commitLSN: LSN
  public var name: String

  public init(commitLSN: LSN, name: String) {
    self.commitLSN = commitLSN
    self.name = name
  }
}

/// 'R': describes a table before its first change on a connection, and again
/// after its schema changes.
public struct Relation: Equatable, Sendable {
  public struct Column: Equatable, Sendable {
    /// "Flags for the column. Currently can be either 0 for no flags or 1
    /// which marks the column as part of the key."
    public var flags: UInt8
    public var name: String
    public var typeOID: UInt32
    public var typeModifier: Int32

    public init(flags: UInt8, name: String, typeOID: UInt32, typeModifier: Int32) {
      self.flags = flags
      self.name = name
      self.typeOID = typeOID
      self.typeModifier = typeModifier
    }

    public var isKey: Bool { flags & 1 != 0 }
  }

  /// Set only inside a streamed transaction (protocol version 2).
  public var xid: UInt32?
  public var relationID: UInt32
  public var namespace: String
  public var name: String
  /// "Replica identity setting for the relation (same as relreplident in
  /// pg_class)": 'd' default, 'n' nothing, 'f' full, 'i' index.
  public var replicaIdentity: UInt8
  public var columns: [Column]

  public init(
    xid: UInt32? = nil, relationID: UInt32, namespace: String, name: String, replicaIdentity: UInt8,
    columns: [Column]
  ) {
    self.xid = xid
    self.relationID = relationID
    self.namespace = namespace
    self.name = name
    self.replicaIdentity = replicaIdentity
    self.columns = columns
  }

  /// `schema.table`, the way `sluice.sources.relation` names it.
  public var qualifiedName: String { namespace + "." + name }
}

/// 'Y': a non-builtin type (an enum, a domain, an array of one) used by a relation.
public struct TypeInfo: Equatable, Sendable {
  public var xid: UInt32?
  public var typeOID: UInt32
  public var namespace: String
  public var name: String

  public init(xid: UInt32? = nil, typeOID: UInt32, namespace: String, name: String) {
    self.xid = xid
    self.typeOID = typeOID
    self.namespace = namespace
    self.name = name
  }
}

/// One column of a TupleData: 'n' NULL, 'u' unchanged TOASTed value (the
/// value is not sent), 't' text-format value, 'b' binary-format value.
public enum TupleValue: Equatable, Sendable {
  case null
  case unchangedToast
  case text(ArraySlice<UInt8>)
  case binary(ArraySlice<UInt8>)
}

/// The columns of one row. Values point into the received buffer: decoding
/// copies nothing.
public struct TupleData: Equatable, Sendable {
  public enum Kind: UInt8, Sendable {
    case null = 0x6E  // 'n'
    case unchangedToast = 0x75  // 'u'
    case text = 0x74  // 't'
    case binary = 0x62  // 'b'
  }

  public struct Column: Equatable, Sendable {
    public var kind: Kind
    public var range: Range<Int>
  }

  public let buffer: [UInt8]
  public let columns: [Column]

  public init(buffer: [UInt8], columns: [Column]) {
    self.buffer = buffer
    self.columns = columns
  }

  /// Builds a tuple from values (for tests and the encoder).
  public init(_ values: [TupleValue]) {
    var buffer: [UInt8] = []
    var columns: [Column] = []
    for value in values {
      switch value {
      case .null: columns.append(Column(kind: .null, range: buffer.count..<buffer.count))
      case .unchangedToast: columns.append(Column(kind: .unchangedToast, range: buffer.count..<buffer.count))
      case .text(let bytes), .binary(let bytes):
        let start = buffer.count
        buffer.append(contentsOf: bytes)
        let kind: Kind = if case .text = value { .text } else { .binary }
        columns.append(Column(kind: kind, range: start..<buffer.count))
      }
    }
    self.init(buffer: buffer, columns: columns)
  }

  public var count: Int { columns.count }

  public subscript(index: Int) -> TupleValue {
    let column = columns[index]
    switch column.kind {
    case .null: return .null
    case .unchangedToast: return .unchangedToast
    case .text: return .text(buffer[column.range])
    case .binary: return .binary(buffer[column.range])
    }
  }

  public var values: [TupleValue] { (0..<count).map { self[$0] } }

  public static func == (lhs: TupleData, rhs: TupleData) -> Bool {
    lhs.count == rhs.count && (0..<lhs.count).allSatisfy { lhs[$0] == rhs[$0] }
  }
}

/// 'I'
public struct Insert: Equatable, Sendable {
  public var xid: UInt32?
  public var relationID: UInt32
  /// Introduced by 'N': the new tuple.
  public var new: TupleData

  public init(xid: UInt32? = nil, relationID: UInt32, new: TupleData) {
    self.xid = xid
    self.relationID = relationID
    self.new = new
  }
}

/// 'U'
public struct Update: Equatable, Sendable {
  public var xid: UInt32?
  public var relationID: UInt32
  /// 'K': "the old tuple's key columns" (present only if the key changed).
  public var oldKey: TupleData?
  /// 'O': "the whole old tuple" (replica identity FULL).
  public var old: TupleData?
  /// 'N': the new tuple.
  public var new: TupleData

  public init(xid: UInt32? = nil, relationID: UInt32, oldKey: TupleData? = nil, old: TupleData? = nil, new: TupleData) {
    self.xid = xid
    self.relationID = relationID
    self.oldKey = oldKey
    self.old = old
    self.new = new
  }
}

/// 'D'
public struct Delete: Equatable, Sendable {
  public var xid: UInt32?
  public var relationID: UInt32
  /// 'K': the old key (replica identity default or index).
  public var oldKey: TupleData?
  /// 'O': the whole old tuple (replica identity FULL).
  public var old: TupleData?

  public init(xid: UInt32? = nil, relationID: UInt32, oldKey: TupleData? = nil, old: TupleData? = nil) {
    self.xid = xid
    self.relationID = relationID
    self.oldKey = oldKey
    self.old = old
  }
}

/// 'T'
public struct Truncate: Equatable, Sendable {
  public var xid: UInt32?
  /// "Option bits for TRUNCATE: 1 for CASCADE, 2 for RESTART IDENTITY."
  public var options: UInt8
  public var relationIDs: [UInt32]

  public init(xid: UInt32? = nil, options: UInt8, relationIDs: [UInt32]) {
    self.xid = xid
    self.options = options
    self.relationIDs = relationIDs
  }

  public var cascade: Bool { options & 1 != 0 }
  public var restartIdentity: Bool { options & 2 != 0 }
}

/// 'M': a message written by `pg_logical_emit_message`.
public struct LogicalMessage: Equatable, Sendable {
  public var xid: UInt32?
  /// "Flags; Either 0 for no flags or 1 if the logical decoding message is transactional."
  public var flags: UInt8
  public var lsn: LSN
  public var prefix: String
  public var content: [UInt8]

  public init(xid: UInt32? = nil, flags: UInt8, lsn: LSN, prefix: String, content: [UInt8]) {
    self.xid = xid
    self.flags = flags
    self.lsn = lsn
    self.prefix = prefix
    self.content = content
  }

  public var isTransactional: Bool { flags & 1 != 0 }
}

/// 'S'
public struct StreamStart: Equatable, Sendable {
  public var xid: UInt32
  /// "A value of 1 indicates this is the first stream segment for this XID, 0 for any other."
  public var firstSegment: Bool

  public init(xid: UInt32, firstSegment: Bool) {
    self.xid = xid
    self.firstSegment = firstSegment
  }
}

/// 'c'
public struct StreamCommit: Equatable, Sendable {
  public var xid: UInt32
  public var flags: UInt8
  public var commitLSN: LSN
  public var endLSN: LSN
  public var commitTime: PostgresTimestamp

  public init(xid: UInt32, flags: UInt8 = 0, commitLSN: LSN, endLSN: LSN, commitTime: PostgresTimestamp) {
    self.xid = xid
    self.flags = flags
    self.commitLSN = commitLSN
    self.endLSN = endLSN
    self.commitTime = commitTime
  }
}

/// 'A'
public struct StreamAbort: Equatable, Sendable {
  public var xid: UInt32
  /// "Xid of the subtransaction (will be same as xid of the transaction for top-level transactions)."
  public var subtransactionXID: UInt32

  public init(xid: UInt32, subtransactionXID: UInt32) {
    self.xid = xid
    self.subtransactionXID = subtransactionXID
  }
}
