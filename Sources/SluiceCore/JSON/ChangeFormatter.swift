/// Turns pgoutput messages into the JSON lines `sluice tail` prints: one
/// line per begin, change and commit, with typed column values.
///
/// With a table filter, a transaction's begin line is held back until its
/// first printed change, so transactions that touch none of the tables print nothing.
public struct ChangeFormatter: Sendable {
  public private(set) var relations = RelationCache()
  private var tables: Set<String>?
  private var pendingBegin: [UInt8]?
  private var beginPrinted = false
  private var xid: UInt32?

  /// `tables`: `schema.table` names to print; a bare name means `public.name`. nil prints all.
  public init(tables: [String]? = nil) {
    self.tables = tables.map { Set($0.map { $0.contains(".") ? $0 : "public." + $0 }) }
  }

  /// Forget relations and the open transaction, as after a reconnect.
  public mutating func reset() {
    relations.clear()
    pendingBegin = nil
    beginPrinted = false
    xid = nil
  }

  /// The line for `message` (without the newline), or nil if it prints nothing.
  /// `lsn` is the WAL position of the message (XLogData's walStart).
  public mutating func line(for message: PgOutputMessage, at lsn: LSN) throws(RowDecodeError) -> [UInt8]? {
    var out = JSONWriter()
    switch message {
    case .relation(let relation):
      relations.apply(relation)
      return nil
    case .type(let type):
      relations.apply(type)
      return nil
    case .begin(let begin):
      xid = begin.xid
      out.raw("{\"kind\":\"begin\",\"xid\":\(begin.xid),\"final_lsn\":\"\(begin.finalLSN)\",\"committed_at\":")
      out.string(PostgresTime.iso8601(begin.commitTime))
      out.raw("}")
      if tables == nil {
        beginPrinted = true
        return out.bytes
      }
      pendingBegin = out.bytes
      beginPrinted = false
      return nil
    case .commit(let commit):
      defer {
        xid = nil
        pendingBegin = nil
        beginPrinted = false
      }
      guard beginPrinted else { return nil }
      out.raw("{\"kind\":\"commit\",\"xid\":\(xid.map(String.init) ?? "null"),\"commit_lsn\":\"\(commit.commitLSN)\",")
      out.raw("\"end_lsn\":\"\(commit.endLSN)\",\"committed_at\":")
      out.string(PostgresTime.iso8601(commit.commitTime))
      out.raw("}")
      return out.bytes
    case .origin(let origin):
      out.raw("{\"kind\":\"origin\",\"commit_lsn\":\"\(origin.commitLSN)\",\"origin\":")
      out.string(origin.name)
      out.raw("}")
    case .insert(let insert):
      guard let relation = try change("insert", insert.xid, insert.relationID, lsn, &out) else { return nil }
      out.raw(",\"new\":")
      out.object(try relations.decode(insert.new, of: relation))
      out.raw("}")
    case .update(let update):
      guard let relation = try change("update", update.xid, update.relationID, lsn, &out) else { return nil }
      if let key = update.oldKey {
        out.raw(",\"key\":")
        out.object(keyColumns(try relations.decode(key, of: relation), relation))
      }
      if let old = update.old {
        out.raw(",\"old\":")
        out.object(try relations.decode(old, of: relation))
      }
      out.raw(",\"new\":")
      out.object(try relations.decode(update.new, of: relation))
      out.raw("}")
    case .delete(let delete):
      guard let relation = try change("delete", delete.xid, delete.relationID, lsn, &out) else { return nil }
      if let key = delete.oldKey {
        out.raw(",\"key\":")
        out.object(keyColumns(try relations.decode(key, of: relation), relation))
      }
      if let old = delete.old {
        out.raw(",\"old\":")
        out.object(try relations.decode(old, of: relation))
      }
      out.raw("}")
    case .truncate(let truncate):
      let names = truncate.relationIDs.map { relations[$0]?.qualifiedName ?? "relid:\($0)" }
      let shown = tables.map { wanted in names.filter { wanted.contains($0) } } ?? names
      guard !shown.isEmpty else { return nil }
      out.raw(
        "{\"kind\":\"truncate\",\"xid\":\((truncate.xid ?? xid).map(String.init) ?? "null"),\"lsn\":\"\(lsn)\",\"relations\":["
      )
      for (index, name) in shown.enumerated() {
        if index > 0 { out.raw(",") }
        out.string(name)
      }
      out.raw("],\"cascade\":\(truncate.cascade),\"restart_identity\":\(truncate.restartIdentity)}")
    case .message(let message):
      out.raw(
        "{\"kind\":\"message\",\"xid\":\((message.xid ?? (message.isTransactional ? xid : nil)).map(String.init) ?? "null"),"
      )
      out.raw("\"lsn\":\"\(message.lsn)\",\"transactional\":\(message.isTransactional),\"prefix\":")
      out.string(message.prefix)
      out.raw(",\"content\":")
      out.string(Base64.encode(message.content))
      out.raw("}")
    case .streamStart(let start):
      out.raw("{\"kind\":\"stream_start\",\"xid\":\(start.xid),\"first_segment\":\(start.firstSegment)}")
    case .streamStop:
      out.raw("{\"kind\":\"stream_stop\"}")
    case .streamCommit(let commit):
      out.raw("{\"kind\":\"stream_commit\",\"xid\":\(commit.xid),\"commit_lsn\":\"\(commit.commitLSN)\",")
      out.raw("\"end_lsn\":\"\(commit.endLSN)\",\"committed_at\":")
      out.string(PostgresTime.iso8601(commit.commitTime))
      out.raw("}")
    case .streamAbort(let abort):
      out.raw("{\"kind\":\"stream_abort\",\"xid\":\(abort.xid),\"subxid\":\(abort.subtransactionXID)}")
    }
    return flushBegin(out.bytes)
  }

  /// Writes the common head of a change line; nil when the relation is filtered out.
  private mutating func change(
    _ kind: String, _ streamXID: UInt32?, _ relationID: UInt32, _ lsn: LSN, _ out: inout JSONWriter
  ) throws(RowDecodeError) -> Relation? {
    guard let relation = relations[relationID] else {
      throw RowDecodeError(relation: "relid:\(relationID)", reason: "\(kind) for a relation with no Relation message")
    }
    if let tables, !tables.contains(relation.qualifiedName) { return nil }
    out.raw(
      "{\"kind\":\"\(kind)\",\"xid\":\((streamXID ?? xid).map(String.init) ?? "null"),\"lsn\":\"\(lsn)\",\"relation\":")
    out.string(relation.qualifiedName)
    return relation
  }

  private func keyColumns(_ row: [(String, ColumnValue)], _ relation: Relation) -> [(String, ColumnValue)] {
    zip(row, relation.columns).filter { $0.1.isKey }.map(\.0)
  }

  /// Prepends a held-back begin line to the first printed change.
  private mutating func flushBegin(_ line: [UInt8]) -> [UInt8] {
    guard let begin = pendingBegin else { return line }
    pendingBegin = nil
    beginPrinted = true
    return begin + [0x0A] + line
  }
}
