import Foundation
import SluicePostgres
import Testing

/// SPEC 10: delivered outbox rows go after SLUICE_OUTBOX_RETENTION; pending
/// and dead deliveries stay. Found by review: delivered rows were never
/// deleted, so the outbox grew by every webhook ever sent.
@Suite struct OutboxRetentionTests {
  /// Deliveries `ids`, with this status, delivered this many hours ago (nil: never).
  static func delivery(
    _ db: TestDatabase, _ id: Int, through last: Int? = nil, status: String, deliveredHoursAgo: Int?
  ) throws {
    try db.sql(
      """
      INSERT INTO sluice.outbox (id, endpoint, source, event_id, event_type, actor, idempotency_key, body, status, delivered_at)
      SELECT n, 'edge', 'xp.actions', 'e' || n, 'award', 'ann', 'key-' || n, '{}', $3,
             now() - make_interval(hours => $4::int)
      FROM generate_series($1::bigint, $2::bigint) n
      """, [String(id), String(last ?? id), status, deliveredHoursAgo.map(String.init)])
  }

  @Test func deliveredRowsGoAfterTheirRetentionAndDeadOnesStay() throws {
    let db = try TestDatabase("outboxretention")
    try XPFixture.install(db)
    try Self.delivery(db, 1, through: 2500, status: "delivered", deliveredHoursAgo: 3)  // old: they go
    try Self.delivery(db, 3001, status: "delivered", deliveredHoursAgo: 0)  // young: stays
    try Self.delivery(db, 3002, status: "dead", deliveredHoursAgo: nil)  // dead: stays until resolved
    try Self.delivery(db, 3003, status: "pending", deliveredHoursAgo: nil)
    let hour = ["SLUICE_OUTBOX_RETENTION": "1 hour"]

    var (status, output, errors) = try runCommand(db, ["status"], hour)
    #expect(output.contains("delivered past retention 2500"), "\(output)\(errors)")
    (status, output, errors) = try runCommand(db, ["compact", "--dry-run"], hour)
    #expect(status == 0 && output.contains("sluice.outbox: would delete 2500 rows"), "\(output)\(errors)")
    #expect(try db.scalar("SELECT count(*) FROM sluice.outbox") == "2503")
    (status, output, errors) = try runCommand(db, ["compact"], hour)
    #expect(status == 0 && output.contains("sluice.outbox: deleted 2500 rows"), "\(output)\(errors)")
    #expect(
      try db.sql("SELECT id, status FROM sluice.outbox ORDER BY id").rows == [
        ["3001", "delivered"], ["3002", "dead"], ["3003", "pending"],
      ])

    // The daemon's own passes, with the default of 7 days: the young one stays.
    try Self.delivery(db, 4001, status: "delivered", deliveredHoursAgo: 24 * 8)
    let daemon = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "1"])
    #expect(try eventually(30) { try db.scalar("SELECT count(*) FROM sluice.outbox WHERE id = 4001") == "0" })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(daemon.standardError.contains("retention deleted delivered webhooks rows=1"), "\(daemon.standardError)")
    #expect(try db.scalar("SELECT count(*) FROM sluice.outbox") == "3")

    let bad = try runCommand(db, ["run"], ["SLUICE_OUTBOX_RETENTION": "forever"])
    #expect(bad.0 == 78 && bad.2.contains("SLUICE_OUTBOX_RETENTION"), "\(bad.2)")
  }
}
