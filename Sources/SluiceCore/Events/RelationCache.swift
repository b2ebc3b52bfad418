/// What the stream has said about tables and types on this connection.
/// A Relation message replaces its entry; a reconnect clears everything,
/// since the server sends Relation again before a relation's first change.
public struct RelationCache: Sendable {
  public private(set) var relations: [UInt32: Relation] = [:]
  public private(set) var types: [UInt32: TypeInfo] = [:]

  public init() {}

  public mutating func apply(_ relation: Relation) { relations[relation.relationID] = relation }
  public mutating func apply(_ type: TypeInfo) { types[type.typeOID] = type }
  public mutating func clear() {
    relations.removeAll()
    types.removeAll()
  }

  public subscript(relationID: UInt32) -> Relation? { relations[relationID] }

  /// Decodes a tuple of `relation` into (column name, value) pairs, in column order.
  public func decode(_ tuple: TupleData, of relation: Relation) throws(RowDecodeError) -> [(String, ColumnValue)] {
    guard tuple.count == relation.columns.count else {
      throw RowDecodeError(
        relation: relation.qualifiedName,
        reason: "tuple has \(tuple.count) columns, relation has \(relation.columns.count)")
    }
    var row: [(String, ColumnValue)] = []
    row.reserveCapacity(tuple.count)
    for (index, column) in relation.columns.enumerated() {
      let arrayOfText = types[column.typeOID]?.name.hasPrefix("_") ?? false
      row.append((column.name, ValueDecoder.decode(tuple[index], typeOID: column.typeOID, arrayOfText: arrayOfText)))
    }
    return row
  }
}

public struct RowDecodeError: Error, Equatable, Sendable, CustomStringConvertible {
  public var relation: String
  public var reason: String
  public init(relation: String, reason: String) {
    self.relation = relation
    self.reason = reason
  }
  public var description: String { "\(relation): \(reason)" }
}
