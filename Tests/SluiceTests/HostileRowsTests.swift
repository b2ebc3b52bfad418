import Foundation
import Sluice
import SluicePostgres
import Testing

/// Rows an attacker or a broken client could write: each is rejected or
/// denied with a clear reason, has no effect, and the stream goes on.
@Suite(.serialized) struct HostileRowsTests {
  @Test func hostileGameRows() throws {
    let seed = testSeed(default: 77)
    var random = SeededGenerator(seed: seed)
    let db = try TestDatabase("hostile")
    try ExamplesTests.load(db)
    let rtl = "مستخدم‮evil"
    try db.sql("INSERT INTO sluice.actor_roles (actor, role) VALUES ('ann', 'player'), ($1, 'player')", [rtl])
    let daemon = try startDaemon(
      db, ["SLUICE_DATABASE_URL": db.url.replacingOccurrences(of: "//postgres@", with: "//sluice_daemon@")],
      binary: "sluice-examples")
    func action(_ id: Int, _ user: String, _ type: String, _ payload: String) throws {
      try db.sql(
        "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, $2, $3, $4::jsonb)",
        [String(format: "00000000-0000-4000-8000-%012d", id), user, type, payload])
    }
    // A 1 MiB payload.
    try action(1, "ann", "award_xp", "{\"xp\": 5, \"junk\": \"\(String(repeating: "x", count: 1 << 20))\"}")
    // Junk in text columns: random code points, control characters, no NUL.
    let junk = String(
      (0..<200).map { _ in Character(Unicode.Scalar(UInt32.random(in: 1...0xD7FF, using: &random))!) })
    try action(2, junk, "award_xp", #"{"xp": 5}"#)
    try action(3, "ann", junk, "{}")
    // Unicode and right-to-left text: a real player with an unusual name is fine.
    try action(4, rtl, "award_xp", #"{"xp": 7}"#)
    try action(5, "مستخدم", "award_xp", #"{"xp": 7}"#)
    // 10,000 events from one actor in one transaction.
    try db.sql(
      """
      INSERT INTO game.actions (id, user_id, type, payload)
      SELECT ('10000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'ann', 'award_xp', '{"xp": 1}'
      FROM generate_series(1, 10000) g
      """)
    try action(6, "ann", "award_xp", #"{"xp": 3}"#)
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 10_006 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")

    func outcome(_ id: Int) throws -> [String?] {
      try db.sql(
        "SELECT status, reason FROM sluice.event_log WHERE event_id = $1",
        [String(format: "00000000-0000-4000-8000-%012d", id)]
      ).rows.first ?? []
    }
    #expect(try outcome(1) == ["rejected", "payload larger than 16384 bytes"])
    #expect(try outcome(2).first == "denied")
    #expect(try outcome(2).last??.contains("needs role player") == true)
    #expect(try outcome(3).first == "denied")
    #expect(try outcome(3).last??.contains("no permission rule") == true)
    #expect(try outcome(4) == ["applied", nil])
    #expect(try outcome(5).first == "denied")
    #expect(try outcome(6) == ["applied", nil])
    #expect(
      try db.sql("SELECT user_id, xp FROM game.user_xp ORDER BY user_id").rows == [["ann", "10003"], [rtl, "7"]])
    #expect(
      try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'applied' AND actor = 'ann'") == "10001")
  }

  @Test func nullAndEmptyActorsAreDenied() throws {
    let db = try TestDatabase("nullactor")
    try XPFixture.install(db)
    try db.sql("INSERT INTO sluice.permission_rules (event_type, role) VALUES ('award', 'anyone')")
    try createSlot(db)
    try XPFixture.insert(db, [("named", "zoe", "award", 4, nil), ("empty", "", "award", 4, nil)])
    try db.sql("INSERT INTO xp.actions (id, user_id, type, payload) VALUES ('null', NULL, 'award', '{\"xp\": 4}')")
    let daemon = try startDaemon(db)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try XPFixture.statuses(db) == ["named": "applied", "empty": "denied", "null": "denied"])
    #expect(
      try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'null'")?.contains("actor is empty") == true)
    #expect(try XPFixture.totals(db) == ["zoe": 4])
  }
}
