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
  /// The row had no id: `id` is the daemon's own (`sluice:null-id@<lsn>`),
  /// which the ledger stores as it is (client ids with that prefix are digested).
  public var idIsSynthetic = false

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
  /// Where the actor comes from (SPEC 13).
  public var actorFrom: ActorProof
  /// `existing => 'trust'`: rows written before a `'session'` source's guard keep their actor.
  public var trustsExisting: Bool

  public init(
    relation: String, eventTypeColumn: String? = nil, eventType: String? = nil, idColumn: String = "id",
    actorColumn: String, dedupeColumn: String? = nil, scopeColumn: String? = nil, actorFrom: ActorProof = .column,
    trustsExisting: Bool = false
  ) {
    self.relation = relation
    self.eventTypeColumn = eventTypeColumn
    self.eventType = eventType
    self.idColumn = idColumn
    self.actorColumn = actorColumn
    self.dedupeColumn = dedupeColumn
    self.scopeColumn = scopeColumn
    self.actorFrom = actorFrom
    self.trustsExisting = trustsExisting
  }

  /// The columns a row must have (a missing one makes it `rejected`).
  var namedColumns: [String] {
    var columns = [idColumn, actorColumn] + [eventTypeColumn, dedupeColumn, scopeColumn].compactMap { $0 }
    if case .signed(let signed) = actorFrom {
      columns += [signed.signatureColumn, signed.keyColumn, signed.payloadColumn]
    }
    return columns
  }

  /// Builds the event, or says why the row cannot be one (it is then
  /// `rejected` and owns no dedupe key). The id is always set, so the ledger
  /// can record a malformed row too. Columns are looked up by name, so
  /// columns added, dropped or moved never matter unless they are these.
  public func event(
    from row: Row, commitLSN: LSN?, committedAt: PostgresTimestamp?, xid: UInt32?, position: LSN?
  ) -> (event: Event, malformed: String?) {
    let id = row.text(idColumn)
    let type = eventType ?? eventTypeColumn.flatMap { row.text($0) }
    var event = Event(
      source: relation, id: id ?? "sluice:null-id@\(position?.description ?? "backfill")", type: type ?? "",
      actor: row.text(actorColumn), scope: scopeColumn.flatMap { row.text($0) },
      dedupeKey: dedupeColumn.flatMap { row.text($0) }, row: row, commitLSN: commitLSN, committedAt: committedAt,
      xid: xid)
    event.idIsSynthetic = id == nil
    for column in namedColumns where row[column] == nil {
      return (event, "source \(relation) has no column \"\(column)\"")
    }
    if id == nil { return (event, "id column \"\(idColumn)\" is NULL") }
    guard let type, !type.isEmpty else {
      event.type = ""
      return (event, "event type column \"\(eventTypeColumn ?? "?")\" is NULL or empty")
    }
    if let tooLong = EventLimits.overLong(event) { return (event, tooLong) }
    let size = row.estimatedBytes
    if size > EventLimits.maxRowBytes {
      return (event, "row is \(size) bytes; the limit is \(EventLimits.maxRowBytes)")
    }
    return (event, nil)
  }
}

/// SPEC section 8: client values that become identities are bounded, so
/// that every ledger row fits the ledger's indexes whatever a client writes.
public enum EventLimits {
  /// Longest id, type, actor, scope or dedupe key, in UTF-8 bytes.
  public static let maxFieldBytes = 1024
  /// Largest row (its decoded values) that becomes an event: one row must
  /// not be able to exhaust the daemon's memory when it is written down
  /// (a dead event's record) or bound as a handler's parameter.
  public static let maxRowBytes = 16 << 20

  /// Why the event breaks a limit (naming the first field that does), or nil.
  public static func overLong(_ event: Event) -> String? {
    let fields: [(String, String?)] = [
      ("id", event.id), ("type", event.type), ("actor", event.actor), ("scope", event.scope),
      ("dedupe_key", event.dedupeKey),
    ]
    for (name, value) in fields {
      if let count = value?.utf8.count, count > maxFieldBytes {
        return "\(name) is \(count) bytes long; the limit is \(maxFieldBytes)"
      }
    }
    return nil
  }

  /// The value as the ledger stores it: nil when it is over the limit.
  public static func storable(_ value: String?) -> String? {
    guard let value, value.utf8.count <= maxFieldBytes else { return nil }
    return value
  }
}
