/// Turns decoded pgoutput messages into the items the handling stage
/// applies, in stream order: begins and commits, inserts of sources,
/// changes of the configuration tables (keyed by their primary key; an
/// update that changes the key is a delete of the old key, then an upsert),
/// and the updates, deletes and truncates of sources, which are counted and
/// ignored. Pure: the reading thread owns one per connection.
public struct TransactionAssembler: Sendable {
  public private(set) var relations = RelationCache()

  public init() {}

  /// The items `message` (read at `lsn`) becomes, handed to `emit` in order.
  /// `emit` returns false to stop (the queue closed); so does this.
  public mutating func assemble(
    _ message: PgOutputMessage, at lsn: LSN, emit: (StreamItem) throws -> Bool
  ) throws -> Bool {
    switch message {
    case .relation(let relation):
      relations.apply(relation)
    case .type(let type):
      relations.apply(type)
    case .begin(let begin):
      return try emit(.begin(xid: begin.xid, commitLSN: begin.finalLSN, commitTime: begin.commitTime))
    case .commit(let commit):
      return try emit(.commit(endLSN: commit.endLSN, commitLSN: commit.commitLSN, commitTime: commit.commitTime))
    case .insert(let insert):
      let relation = try relation(insert.relationID)
      let row = Row(try relations.decode(insert.new, of: relation))
      if let table = Policy.Table(relation: relation.qualifiedName) {
        return try emit(.configChange(.upsert(table, key: table.key(row.text) ?? "", row: Self.texts(row))))
      }
      return try emit(.insert(relation: relation.qualifiedName, row: row, lsn: lsn))
    case .update(let update):
      let relation = try relation(update.relationID)
      guard let table = Policy.Table(relation: relation.qualifiedName) else {
        return try emit(.ignored(relation: relation.qualifiedName, kind: "update"))
      }
      let row = Row(try relations.decode(update.new, of: relation))
      let key = table.key(row.text) ?? ""
      if let old = update.oldKey ?? update.old,
        let oldKey = table.key(Row(try relations.decode(old, of: relation)).text), !oldKey.bytewiseEquals(key)
      {
        guard try emit(.configChange(.delete(table, key: oldKey))) else { return false }
      }
      return try emit(.configChange(.upsert(table, key: key, row: Self.texts(row))))
    case .delete(let delete):
      let relation = try relation(delete.relationID)
      guard let table = Policy.Table(relation: relation.qualifiedName) else {
        return try emit(.ignored(relation: relation.qualifiedName, kind: "delete"))
      }
      guard let old = delete.oldKey ?? delete.old,
        let key = table.key(Row(try relations.decode(old, of: relation)).text)
      else { return true }
      return try emit(.configChange(.delete(table, key: key)))
    case .truncate(let truncate):
      for id in truncate.relationIDs {
        let name = try relation(id).qualifiedName
        let item: StreamItem =
          Policy.Table(relation: name).map { .configChange(.truncate($0)) }
          ?? .ignored(relation: name, kind: "truncate")
        guard try emit(item) else { return false }
      }
    case .origin, .message:
      // Origins and logical messages carry no rows; messages are not requested.
      break
    case .streamStart, .streamStop, .streamCommit, .streamAbort:
      // Sluice never asks for in-progress transactions: if they came anyway,
      // applying their rows could apply changes that are later aborted.
      throw StreamingNotRequested()
    }
    return true
  }

  private func relation(_ id: UInt32) throws -> Relation {
    guard let relation = relations[id] else {
      throw RowDecodeError(relation: "relid:\(id)", reason: "change for a relation with no Relation message")
    }
    return relation
  }

  private static func texts(_ row: Row) -> [String: String?] {
    var result: [String: String?] = [:]
    for (name, value) in row.columns { result[name] = value.textValue }
    return result
  }
}

/// pgoutput sent in-progress transaction messages that Sluice never requested.
public struct StreamingNotRequested: Error, Equatable, CustomStringConvertible {
  public init() {}
  public var description: String { "the server streamed an in-progress transaction, which Sluice never requests" }
}
