import Foundation
import SluiceCore
import SluicePostgres
import Testing

/// Real pgoutput messages from the server: every one must decode and format.
/// With SLUICE_WRITE_CORPUS=1 they are written to Tests/SluiceCoreTests/Corpus/
/// as `real-NN.hex`, where the fuzz test mutates them.
@Suite struct CorpusCaptureTests {
  @Test func realMessagesDecode() throws {
    let db = try TestDatabase("corpus")
    try db.sql(
      """
      CREATE TYPE mood AS ENUM ('sad', 'happy');
      CREATE TABLE captured (id int PRIMARY KEY, label text, amount numeric, at timestamptz, tags text[], doc jsonb,
                             raw bytea, feeling mood, flag bool);
      ALTER TABLE captured REPLICA IDENTITY FULL;
      CREATE PUBLICATION capture FOR TABLE captured;
      """)
    let stream = try ReplicationConnection(conninfo: db.url)
    defer { stream.close() }
    let slot = try stream.createSlot("c_\(db.slot)", temporary: true)
    try db.sql(
      """
      INSERT INTO captured VALUES (1, 'a "quoted" label', 12.50, '2024-02-29 12:00:00+00', '{x,"y z",NULL}',
                                   '{"k": [1, 2]}', '\\x00ff', 'happy', true), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
      UPDATE captured SET label = 'changed', amount = amount + 1 WHERE id = 1;
      DELETE FROM captured WHERE id = 2;
      SELECT pg_logical_emit_message(true, 'sluice', 'hello');
      TRUNCATE captured;
      """)
    let end = LSN(try db.scalar("SELECT pg_current_wal_lsn()::text") ?? "") ?? .zero
    try stream.startReplication(
      slot: slot.name, start: slot.consistentPoint,
      protocolVersion: ReplicationConnection.protocolVersion(serverVersion: stream.connection.serverVersion),
      publications: ["capture"], messages: true)
    var payloads: [[UInt8]] = []
    var decoder = PgOutputDecoder()
    var formatter = ChangeFormatter()
    var kinds = Set<String>()
    let deadline = Date().addingTimeInterval(20)
    reading: while Date() < deadline {
      guard let message = try stream.read(timeoutMilliseconds: 200) else { continue }
      switch message {
      case .xLogData(let data):
        payloads.append(Array(data.payload))
        let decoded = try decoder.decode(data)
        kinds.insert(decoded.name)
        _ = try formatter.line(for: decoded, at: data.walStart)
        if case .commit(let commit) = decoded, commit.endLSN >= end { break reading }
      case .keepalive(let keepalive):
        if keepalive.walEnd >= end && !kinds.isEmpty && kinds.contains("Truncate") { break reading }
      }
    }
    stream.stop()
    #expect(
      kinds.isSuperset(of: ["Begin", "Relation", "Type", "Insert", "Update", "Delete", "Message", "Truncate", "Commit"])
    )
    if ProcessInfo.processInfo.environment["SLUICE_WRITE_CORPUS"] != nil {
      let folder = ExamplesTests.repository.appendingPathComponent("Tests/SluiceCoreTests/Corpus")
      for (index, payload) in payloads.enumerated() {
        try (payload.map { String(format: "%02x", $0) }.joined() + "\n").write(
          to: folder.appendingPathComponent(String(format: "real-%02d.hex", index)), atomically: true, encoding: .utf8)
      }
    }
  }
}
