/// One inserted source row, as a domain event.
public struct Event: Sendable, Equatable {
  /// `schema.table` of the source.
  public var source: String
  public var id: String
  public var type: String
  /// nil or empty: always denied.
  public var actor: String?
  public var scope: String?
  public var dedupeKey: String?
  /// The whole row, typed, in column order.
  public var row: Row
  /// Commit LSN and time of the source transaction; nil for backfilled rows.
  public var commitLSN: LSN?
  public var committedAt: PostgresTimestamp?
  public var xid: UInt32?

  public init(
    source: String, id: String, type: String, actor: String?, scope: String? = nil, dedupeKey: String? = nil,
    row: Row, commitLSN: LSN? = nil, committedAt: PostgresTimestamp? = nil, xid: UInt32? = nil
  ) {
    self.source = source
    self.id = id
    self.type = type
    self.actor = actor
    self.scope = scope
    self.dedupeKey = dedupeKey
    self.row = row
    self.commitLSN = commitLSN
    self.committedAt = committedAt
    self.xid = xid
  }

  /// The event as a SQL handler receives it:
  /// `{"id","type","actor","scope","dedupe_key","source","row":{…},"commit_lsn","committed_at"}`.
  public func json() -> String {
    var writer = JSONWriter(capacity: 256)
    func field(_ name: String, _ value: String?, first: Bool = false) {
      if !first { writer.raw(",") }
      writer.key(name)
      if let value { writer.string(value) } else { writer.raw("null") }
    }
    writer.raw("{")
    field("id", id, first: true)
    field("type", type)
    field("actor", actor)
    field("scope", scope)
    field("dedupe_key", dedupeKey)
    field("source", source)
    writer.raw(",\"row\":")
    writer.object(row.columns)
    field("commit_lsn", commitLSN?.description)
    field("committed_at", committedAt.map(PostgresTime.iso8601))
    writer.raw("}")
    return String(decoding: writer.bytes, as: UTF8.self)
  }
}

/// A decoded row: (column, value) pairs in column order.
public struct Row: Sendable, Equatable {
  public var columns: [(String, ColumnValue)]

  public init(_ columns: [(String, ColumnValue)]) { self.columns = columns }

  public subscript(name: String) -> ColumnValue? {
    columns.first { $0.0 == name }?.1
  }

  /// Text of a column, nil for NULL or a missing column.
  public func text(_ name: String) -> String? { self[name]?.textValue }

  public static func == (lhs: Row, rhs: Row) -> Bool {
    lhs.columns.count == rhs.columns.count && zip(lhs.columns, rhs.columns).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
  }
}

/// A row of `sluice.sources`: how rows of one table become events.
public struct SourceMapping: Sendable, Equatable {
  public var relation: String
  public var eventTypeColumn: String?
  public var eventType: String?
  public var idColumn: String
  public var actorColumn: String
  public var dedupeColumn: String?
  public var scopeColumn: String?

  public init(
    relation: String, eventTypeColumn: String? = nil, eventType: String? = nil, idColumn: String = "id",
    actorColumn: String, dedupeColumn: String? = nil, scopeColumn: String? = nil
  ) {
    self.relation = relation
    self.eventTypeColumn = eventTypeColumn
    self.eventType = eventType
    self.idColumn = idColumn
    self.actorColumn = actorColumn
    self.dedupeColumn = dedupeColumn
    self.scopeColumn = scopeColumn
  }

  /// Builds the event, or says why the row is malformed (it is then `rejected`).
  /// The id is always set, so the ledger can record a malformed row too.
  public func event(
    from row: Row, commitLSN: LSN?, committedAt: PostgresTimestamp?, xid: UInt32?, position: LSN?
  ) -> (event: Event, malformed: String?) {
    let id = row.text(idColumn)
    let type = eventType ?? eventTypeColumn.flatMap { row.text($0) }
    var event = Event(
      source: relation, id: id ?? "lsn:\(position?.description ?? "?")", type: type ?? "",
      actor: row.text(actorColumn), scope: scopeColumn.flatMap { row.text($0) },
      dedupeKey: dedupeColumn.flatMap { row.text($0) }, row: row, commitLSN: commitLSN, committedAt: committedAt,
      xid: xid)
    for column in [idColumn, actorColumn] + [eventTypeColumn, dedupeColumn, scopeColumn].compactMap({ $0 })
    where row[column] == nil {
      return (event, "source \(relation) has no column \"\(column)\"")
    }
    if id == nil { return (event, "id column \"\(idColumn)\" is NULL") }
    guard let type, !type.isEmpty else {
      event.type = ""
      return (event, "event type column \"\(eventTypeColumn ?? "?")\" is NULL or empty")
    }
    return (event, nil)
  }
}
