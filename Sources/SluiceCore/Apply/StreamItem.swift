/// What the reading stage hands the handling stage, in stream order.
public enum StreamItem: Sendable {
  case begin(xid: UInt32, commitLSN: LSN, commitTime: PostgresTimestamp)
  /// An inserted row of a table that is not a configuration table.
  case insert(relation: String, row: Row, lsn: LSN)
  /// A change of `sluice.sources`, `permission_rules`, `actor_roles` or `handlers`.
  case configChange(Policy.Change)
  /// An update, delete or truncate of a source: counted and otherwise ignored.
  case ignored(relation: String, kind: String)
  case commit(endLSN: LSN, commitLSN: LSN, commitTime: PostgresTimestamp)
  /// The server's keepalive, in stream order: the handling stage, which owns
  /// the `AckTracker`, confirms its WAL end once everything before it is durable.
  case keepalive(walEnd: LSN)
}

extension StreamItem {
  /// Roughly the memory the item holds: the queue between the stages and
  /// each batch are bounded by it, whatever the size of one row.
  public var estimatedBytes: Int {
    switch self {
    case .insert(let relation, let row, _): 64 + relation.utf8.count + row.estimatedBytes
    case .configChange(.upsert(_, let key, let row)):
      64 + key.utf8.count + row.reduce(0) { $0 + $1.key.utf8.count + ($1.value?.utf8.count ?? 0) }
    default: 64
    }
  }
}

extension Row {
  public var estimatedBytes: Int { columns.reduce(0) { $0 + 16 + $1.0.utf8.count + $1.1.estimatedBytes } }
}

extension ColumnValue {
  public var estimatedBytes: Int {
    switch self {
    case .null, .unchangedToast, .bool, .int, .float: 8
    case .numeric(let text), .text(let text), .uuid(let text), .json(let text), .timestamp(let text),
      .date(let text):
      text.utf8.count
    case .bytes(let data): data.count
    case .array(let items): items.reduce(16) { $0 + $1.estimatedBytes }
    }
  }
}
