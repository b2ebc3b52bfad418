import Foundation
import SluiceCore
import SluicePostgres
import Testing

/// SPEC 8: "Errors that cannot pass are not retried." Found on main: twenty
/// rows whose handler overflowed a smallint were retried five times each,
/// with backoff, and every other user's events waited up to 10.6 s.
@Suite struct FinalErrorTests {
  /// Each class is final or retried as the SPEC lists (57P01–57P03, which a
  /// handler cannot raise without its connection counting as lost, and the
  /// whole list, are in RetryRuleTests; 08006 in PoisonTests).
  @Test func eachSQLStateIsFinalOrRetriedAsListed() throws {
    let db = try TestDatabase("finalcodes")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    let final = ["22003", "22P02", "23505", "23514", "P0001", "42501"]
    let retried = ["40001", "40P01", "55P03", "57014", "53100"]
    for code in final + retried {
      try XPFixture.handler(
        db, "c_\(code.lowercased())", "BEGIN RAISE EXCEPTION 'failing with %', '\(code)' USING ERRCODE = '\(code)'; END"
      )
    }
    try createSlot(db)
    let rows = (final + retried).map { ("id-\($0)", "ann", "c_\($0.lowercased())", 1, String?.none) }
    try XPFixture.insert(db, rows + [("a", "ann", "award", 3, nil)])
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "3"])
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == rows.count + 1 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    var attempts: [String: String] = [:]
    for row in try db.sql("SELECT event_id, status, attempts, reason FROM sluice.event_log WHERE event_id <> 'a'").rows
    {
      let code = String((row[0] ?? "").dropFirst(3))
      #expect(row[1] == "dead", "\(code)")
      attempts[code] = row[2]
      if code != "57014" { #expect(row[3]?.contains("failing with \(code)") == true, "\(row[3] ?? "")") }
    }
    for code in final { #expect(attempts[code] == "1", "\(code) is final: one attempt") }
    for code in retried { #expect(attempts[code] == "3", "\(code) may pass: retried up to SLUICE_MAX_ATTEMPTS") }
    #expect(try XPFixture.totals(db) == ["ann": 3])
    #expect(daemon.standardError.contains("event failed with an error no retry can pass; dead"))
  }

  /// 500 rows of one client that always fail (22003), among a steady load
  /// of other users' events: the others wait at most a second. Then the
  /// handler is fixed and `dlq retry` applies each once.
  @Test func fiveHundredFailingRowsDoNotHoldOtherUsers() throws {
    let db = try TestDatabase("finalstall")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann", "ben", "cat"])
    try XPFixture.handler(
      db, "boost",
      """
      DECLARE small smallint;
      BEGIN
        small := (e->'row'->'payload'->>'xp')::int;
        INSERT INTO xp.totals VALUES (e->>'actor', small) ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + small;
      END
      """)
    try createSlot(db)
    let daemon = try startDaemon(db)
    var random = SeededGenerator(seed: testSeed(default: 31))
    var expected: [String: Int] = [:]
    for round in 0..<100 {
      var rows: [(String, String, String, Int, String?)] = (0..<5).map {
        ("m\(round)-\($0)", "mallory", "boost", 100_000, nil)
      }
      for user in ["ann", "ben"] {
        rows.append(("\(user)\(round)", user, "award", 1, nil))
        expected[user, default: 0] += 1
      }
      rows.append(("cat\(round)", "cat", "boost", 2, nil))  // the same handler, a value that fits
      expected["cat", default: 0] += 2
      try XPFixture.insert(db, rows.shuffled(using: &random))
      usleep(20_000)  // a steady load, not a backlog: latency is what is measured
    }
    #expect(try eventually(120) { try XPFixture.ledgerCount(db) == 800 })
    let others = try db.sql(
      """
      SELECT max(processed_at - committed_at)::text, percentile_disc(0.99) WITHIN GROUP (ORDER BY processed_at - committed_at)::text,
             extract(epoch FROM max(processed_at - committed_at))
      FROM sluice.event_log WHERE actor <> 'mallory'
      """
    ).rows[0]
    print("other users' latency beside 500 failing rows: max \(others[0] ?? "?"), p99 \(others[1] ?? "?")")
    #expect((Double(others[2] ?? "") ?? 99) < 1.0, "max \(others[0] ?? "?")")
    #expect(
      try db.sql(
        "SELECT status, attempts, count(*) FROM sluice.event_log WHERE actor = 'mallory' GROUP BY 1, 2"
      ).rows == [["dead", "1", "500"]])
    #expect(
      try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'm7-3'")?.contains("out of range") == true)
    #expect(try XPFixture.totals(db) == expected)
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)

    // Fixed: the boost is capped. `dlq retry` applies each dead event once.
    try db.sql(
      """
      CREATE OR REPLACE FUNCTION xp.boost(e jsonb) RETURNS void LANGUAGE plpgsql AS $$
      BEGIN
        INSERT INTO xp.totals VALUES (e->>'actor', least((e->'row'->'payload'->>'xp')::int, 10))
          ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + least((e->'row'->'payload'->>'xp')::int, 10);
      END $$
      """)
    let (status, _, stderr) = try runCommand(db, ["dlq", "retry", "--all"])
    #expect(status == 0, "\(stderr)")
    expected["mallory"] = 5000
    #expect(try XPFixture.totals(db) == expected)
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'dead'") == "0")
  }

  /// Found by review: a deferred constraint (class 23) fails at COMMIT, not
  /// in the handler, and was retried with backoff. It is final too.
  @Test func aDeferredConstraintThatFailsAtCommitIsFinal() throws {
    let db = try TestDatabase("finaldeferred")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann", "ben"])
    try db.sql(
      """
      CREATE TABLE xp.parents (id text PRIMARY KEY);
      CREATE TABLE xp.children (id text PRIMARY KEY,
        parent text REFERENCES xp.parents DEFERRABLE INITIALLY DEFERRED);
      """)
    try XPFixture.handler(db, "adopt", "BEGIN INSERT INTO xp.children VALUES (e->>'id', 'nobody'); END")
    try createSlot(db)
    let started = Date()
    try XPFixture.insert(db, [("orphan", "ann", "adopt", 1, nil), ("after", "ben", "award", 3, nil)])
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "5"])
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 2 })
    let took = Date().timeIntervalSince(started)
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let row = try db.sql("SELECT status, attempts, reason FROM sluice.event_log WHERE event_id = 'orphan'").rows.first
    #expect(row?[0] == "dead")
    #expect((Int(row?[1] ?? "") ?? 99) <= 2, "at most the batch's try and one alone: \(row?[1] ?? "?")")
    #expect(row?[2]?.contains("foreign key") == true, "\(row?[2] ?? "")")
    #expect(try XPFixture.statuses(db)["after"] == "applied")
    #expect(try XPFixture.totals(db) == ["ben": 3])
    #expect(took < 10, "no backoff between attempts: \(took) s")
    #expect(try db.scalar("SELECT count(*) FROM xp.children") == "0")
  }
}
