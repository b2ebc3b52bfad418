import Testing

@testable import SluiceCore

/// The reading stage's translation, one message at a time, no server.
@Suite struct TransactionAssemblerTests {
  static func relation(_ id: UInt32, _ namespace: String, _ name: String, _ columns: [String]) -> PgOutputMessage {
    .relation(
      Relation(
        relationID: id, namespace: namespace, name: name, replicaIdentity: UInt8(ascii: "d"),
        columns: columns.enumerated().map {
          Relation.Column(flags: $0.offset == 0 ? 1 : 0, name: $0.element, typeOID: TypeOID.text, typeModifier: -1)
        }))
  }
  static func tuple(_ values: String?...) -> TupleData {
    TupleData(values.map { $0.map { .text(ArraySlice(Array($0.utf8))) } ?? .null })
  }

  /// An assembler that knows a source (1), `sluice.handlers` (2) and `sluice.actor_roles` (3).
  static func assembler() throws -> TransactionAssembler {
    var assembler = TransactionAssembler()
    for message in [
      relation(1, "game", "actions", ["id", "user_id", "type"]),
      relation(2, "sluice", "handlers", ["event_type", "function"]),
      relation(3, "sluice", "actor_roles", ["id", "actor", "role", "scope"]),
    ] {
      _ = try assembler.assemble(message, at: LSN(1)) { _ in true }
    }
    return assembler
  }

  static func items(_ messages: [PgOutputMessage]) throws -> [StreamItem] {
    var assembler = try assembler()
    var items: [StreamItem] = []
    for message in messages {
      _ = try assembler.assemble(message, at: LSN(42)) { item in
        items.append(item)
        return true
      }
    }
    return items
  }

  @Test func beginInsertCommit() throws {
    let items = try Self.items([
      .begin(Begin(finalLSN: LSN(90), commitTime: 7, xid: 5)),
      .insert(Insert(relationID: 1, new: Self.tuple("a1", "ann", "award"))),
      .commit(Commit(commitLSN: LSN(90), endLSN: LSN(100), commitTime: 7)),
    ])
    guard items.count == 3, case .begin(5, LSN(90), 7) = items[0],
      case .insert("game.actions", let row, LSN(42)) = items[1],
      case .commit(LSN(100), LSN(90), 7) = items[2]
    else {
      Issue.record("unexpected items: \(items)")
      return
    }
    #expect(row.text("user_id") == "ann")
  }

  @Test func configurationTablesBecomeChanges() throws {
    let items = try Self.items([
      .insert(Insert(relationID: 2, new: Self.tuple("award", "g.award"))),
      // An update that changes the key: the old key goes, the new one comes.
      .update(Update(relationID: 2, oldKey: Self.tuple("award", nil), new: Self.tuple("award2", "g.award"))),
      .update(Update(relationID: 3, new: Self.tuple("7", "ann", "player", nil))),
      .delete(Delete(relationID: 3, oldKey: Self.tuple("7", nil, nil, nil))),
    ])
    let changes = items.compactMap { item -> Policy.Change? in
      if case .configChange(let change) = item { return change }
      return nil
    }
    #expect(
      changes == [
        .upsert(.handlers, key: "award", row: ["event_type": "award", "function": "g.award"]),
        .delete(.handlers, key: "award"),
        .upsert(.handlers, key: "award2", row: ["event_type": "award2", "function": "g.award"]),
        .upsert(.actorRoles, key: "7", row: ["id": "7", "actor": "ann", "role": "player", "scope": String?.none]),
        .delete(.actorRoles, key: "7"),
      ])
  }

  @Test func sourceUpdatesDeletesAndTruncatesAreIgnoredAndTruncatesFanOut() throws {
    let items = try Self.items([
      .update(Update(relationID: 1, new: Self.tuple("a1", "bob", "award"))),
      .delete(Delete(relationID: 1, oldKey: Self.tuple("a1", nil, nil))),
      .truncate(Truncate(options: 0, relationIDs: [1, 3])),
    ])
    #expect(items.count == 4)
    guard case .ignored("game.actions", "update") = items[0], case .ignored("game.actions", "delete") = items[1],
      case .ignored("game.actions", "truncate") = items[2], case .configChange(.truncate(.actorRoles)) = items[3]
    else {
      Issue.record("unexpected items: \(items)")
      return
    }
  }

  @Test func unrequestedStreamingIsAnError() throws {
    #expect(throws: StreamingNotRequested()) {
      try Self.items([.streamStart(StreamStart(xid: 9, firstSegment: true))])
    }
    #expect(throws: StreamingNotRequested()) { try Self.items([.streamStop]) }
  }

  @Test func aChangeBeforeItsRelationIsAnError() throws {
    #expect(throws: RowDecodeError.self) {
      try Self.items([.insert(Insert(relationID: 99, new: Self.tuple("x")))])
    }
  }

  @Test func aClosedQueueStopsTheFanOut() throws {
    var assembler = try Self.assembler()
    var emitted = 0
    let going = try assembler.assemble(.truncate(Truncate(options: 0, relationIDs: [1, 2, 3])), at: LSN(1)) { _ in
      emitted += 1
      return false
    }
    #expect(!going)
    #expect(emitted == 1)
  }
}
