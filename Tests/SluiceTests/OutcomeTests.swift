import Foundation
import Sluice
import SluicePostgres
import Testing

/// SPEC section 12: each event's outcome, for the actor who sent it, in
/// the transaction of its ledger row and its effects.
@Suite struct OutcomeTests {
  static let on = ["SLUICE_OUTCOMES": "on"]

  /// The XP fixture, plus `mark`: one effect row per applied event (its
  /// id), so that effects can be compared with outcomes one to one. A
  /// payload xp of 0 makes it reject after writing its effect.
  static func install(_ db: TestDatabase) throws {
    try XPFixture.install(db)
    try db.sql("CREATE TABLE xp.effects (event_id text PRIMARY KEY)")
    try XPFixture.handler(
      db, "mark",
      """
      BEGIN
        INSERT INTO xp.effects VALUES (e->>'id');
        IF (e->'row'->'payload'->>'xp')::int = 0 THEN PERFORM sluice.reject('zero after writing'); END IF;
      END
      """)
  }

  /// (status, reason, actor, event type) of each outcome by event id.
  static func outcomes(_ db: TestDatabase) throws -> [String: [String?]] {
    var result: [String: [String?]] = [:]
    for row in try db.sql("SELECT event_id, status, reason, actor, event_type FROM sluice.outcomes").rows {
      result[row[0] ?? ""] = Array(row[1...])
    }
    return result
  }

  /// In one statement (one snapshot): ledger rows with an actor that lack
  /// their outcome (or have another status), outcomes without their ledger
  /// row, applied outcomes without their effect, effects without an applied
  /// outcome. All zero when outcome, ledger and effect commit together.
  static func mismatches(_ db: TestDatabase) throws -> [String?] {
    try db.sql(
      """
      SELECT
        (SELECT count(*) FROM sluice.event_log l WHERE l.actor <> '' AND NOT EXISTS (
           SELECT 1 FROM sluice.outcomes o WHERE o.source = l.source AND o.event_id = l.event_id AND o.status = l.status)),
        (SELECT count(*) FROM sluice.outcomes o WHERE NOT EXISTS (
           SELECT 1 FROM sluice.event_log l WHERE l.source = o.source AND l.event_id = o.event_id AND l.status = o.status)),
        (SELECT count(*) FROM sluice.outcomes o WHERE o.status = 'applied' AND o.event_type = 'mark'
           AND NOT EXISTS (SELECT 1 FROM xp.effects e WHERE e.event_id = o.event_id)),
        (SELECT count(*) FROM xp.effects e WHERE NOT EXISTS (
           SELECT 1 FROM sluice.outcomes o WHERE o.event_id = e.event_id AND o.status = 'applied'))
      """
    ).rows[0]
  }

  @Test func everyStatusReachesItsActorWithTheLedgersReason() throws {
    let db = try TestDatabase("outcome_statuses")
    try Self.install(db)
    try XPFixture.grant(db, ["ann", "bob"])
    try XPFixture.handler(db, "longreject", "BEGIN PERFORM sluice.reject(repeat('ab€', 1000)); END")
    let daemon = try startDaemon(db, Self.on.merging(["SLUICE_MAX_ATTEMPTS": "1"]) { $1 })
    try XPFixture.insert(
      db,
      [
        ("applied", "ann", "award", 5, "k1"), ("rejected", "ann", "award", 0, nil), ("denied", "eve", "award", 5, nil),
        ("duplicate", "ann", "award", 7, "k1"), ("dead", "bob", "later", 1, nil), ("flaky", "bob", "flaky", 1, nil),
        ("anonymous", "", "award", 5, nil), ("long", "ann", "longreject", 1, nil),
        ("wrote-then-rejected", "bob", "mark", 0, nil), ("marked", "bob", "mark", 1, nil),
      ])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 10 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")

    let outcomes = try Self.outcomes(db)
    #expect(outcomes["applied"] == ["applied", nil, "ann", "award"])
    #expect(outcomes["rejected"] == ["rejected", "xp must be a positive integer", "ann", "award"])
    #expect(outcomes["denied"]?[0] == "denied")
    #expect(outcomes["denied"]?[1]?.contains("eve") == true, "the reason names the actor")
    #expect(outcomes["duplicate"]?[0] == "duplicate")
    #expect(outcomes["dead"] == ["dead", "no handler for later", "bob", "later"])
    #expect(outcomes["flaky"]?[0] == "dead")
    #expect(outcomes["flaky"]?[1]?.contains("flaky handler is broken") == true)
    #expect(outcomes["anonymous"] == nil, "an event without an actor has no outcome")
    #expect(outcomes["wrote-then-rejected"] == ["rejected", "zero after writing", "bob", "mark"])
    #expect(outcomes["marked"] == ["applied", nil, "bob", "mark"])
    #expect(outcomes.count == 9)
    // The rejected handler's write went with its transaction; the applied one's stayed.
    #expect(try db.sql("SELECT event_id FROM xp.effects").rows == [["marked"]])
    #expect(try Self.mismatches(db) == ["0", "0", "0", "0"])
    // The same reason as the ledger's, cut at 1,024 bytes on a character boundary.
    let long = try db.sql(
      """
      SELECT octet_length(o.reason), starts_with(l.reason, o.reason), octet_length(l.reason) > 1024
      FROM sluice.outcomes o JOIN sluice.event_log l USING (source, event_id) WHERE event_id = 'long'
      """
    ).rows
    #expect(long == [["1022", "t", "t"]])
    // Every column as the ledger has it.
    #expect(
      try db.scalar(
        """
        SELECT count(*) FROM sluice.outcomes o JOIN sluice.event_log l USING (source, event_id)
        WHERE o.commit_lsn = l.commit_lsn AND o.event_type = l.event_type AND o.actor = l.actor
          AND o.processed_at = l.processed_at AND o.source = 'xp.actions'
        """) == "9")
  }

  /// An outcome row written by hand for an event not yet in the ledger
  /// (only the table's owner can) makes way for the event's own; the
  /// stream goes on.
  @Test func aHandWrittenOutcomeNeverStopsTheStream() throws {
    let db = try TestDatabase("outcome_stale")
    try Self.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql(
      "INSERT INTO sluice.outcomes (source, event_id, actor, status, reason) VALUES ('xp.actions', 's1', 'ann', 'dead', 'by hand')"
    )
    let daemon = try startDaemon(db, Self.on)
    try XPFixture.insert(db, [("s1", "ann", "award", 5, nil), ("s2", "ann", "award", 5, nil)])
    try XPFixture.insert(db, [("s3", "ann", "award", 5, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let outcomes = try Self.outcomes(db)
    #expect(outcomes["s1"] == ["applied", nil, "ann", "award"])
    #expect(outcomes["s2"]?[0] == "applied" && outcomes["s3"]?[0] == "applied")
    #expect(try XPFixture.totals(db) == ["ann": 15])
  }

  @Test func offWritesNothing() throws {
    let db = try TestDatabase("outcome_off")
    try Self.install(db)
    try XPFixture.grant(db, ["ann"])
    let daemon = try startDaemon(db)
    try XPFixture.insert(
      db, [("a", "ann", "award", 5, nil), ("b", "ann", "later", 1, nil), ("c", "ann", "mark", 1, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try db.scalar("SELECT count(*) FROM sluice.outcomes") == "0")
  }

  /// A handler that fails after writing, every attempt: no effect, and the
  /// outcome appears only with the final (dead) ledger row. Meanwhile a
  /// reader polling in single snapshots never sees an effect without its
  /// outcome, nor the reverse.
  @Test func aHandlerThatFailsAfterWritingLeavesNoOutcomeAndNoEffect() throws {
    let db = try TestDatabase("outcome_fail")
    try Self.install(db)
    try XPFixture.handler(
      db, "boom", "BEGIN INSERT INTO xp.effects VALUES (e->>'id'); RAISE EXCEPTION 'failed after writing'; END")
    let daemon = try startDaemon(db, Self.on.merging(["SLUICE_MAX_ATTEMPTS": "3", "SLUICE_BATCH_SIZE": "50"]) { $1 })
    var rows: [(String, String, String, Int, String?)] = (0..<400).map {
      (String(format: "m%04d", $0), "u\($0 % 7)", "mark", $0 % 10 == 0 ? 0 : 1, nil)
    }
    rows.insert(("boom", "ann", "boom", 1, nil), at: 200)
    try XPFixture.insert(db, rows)
    var polls = 0
    while try XPFixture.ledgerCount(db) < 401 {
      #expect(try Self.mismatches(db) == ["0", "0", "0", "0"])
      #expect(try db.scalar("SELECT count(*) FROM xp.effects WHERE event_id = 'boom'") == "0")
      polls += 1
      #expect(polls < 20_000, "the ledger never reached 401 rows")
      if polls >= 20_000 { break }
      usleep(2_000)  // pacing the polls, not waiting for anything
    }
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    print("polls while draining: \(polls)")
    let boom = try Self.outcomes(db)["boom"]
    #expect(boom?[0] == "dead" && boom?[2] == "ann" && boom?[3] == "boom")
    #expect(boom?[1]?.contains("failed after writing") == true, "the handler's error: \(String(describing: boom))")
    #expect(try db.scalar("SELECT count(*) FROM xp.effects") == "360")
    #expect(try db.scalar("SELECT count(*) FROM sluice.outcomes WHERE status = 'rejected'") == "40")
    #expect(try Self.mismatches(db) == ["0", "0", "0", "0"])
  }

  @Test func killNineLeavesOutcomeLedgerAndEffectTogetherOrNone() throws {
    let seed = testSeed(default: 1212)
    var random = SeededGenerator(seed: seed)
    let db = try TestDatabase("outcome_crash")
    try Self.install(db)
    let environment = Self.on.merging(["SLUICE_BATCH_SIZE": "200"]) { $1 }
    try createSlot(db, environment)
    var total = 0
    for t in 0..<80 {
      try XPFixture.insert(
        db,
        (0..<100).map { r in
          (
            String(format: "k%05d", t * 100 + r), "u\(Int.random(in: 0..<30, using: &random))", "mark",
            Int.random(in: 0..<20, using: &random) == 0 ? 0 : 1, nil
          )
        })
      total += 100
    }
    var daemon = try startDaemon(db, environment)
    let thresholds = (0..<5).map { _ in Int.random(in: 300..<7_500, using: &random) }.sorted()
    print("kill thresholds: \(thresholds)")
    for threshold in thresholds {
      #expect(try eventually(60, "ledger ≥ \(threshold)") { try XPFixture.ledgerCount(db) >= threshold })
      daemon.signal(SIGKILL)
      _ = daemon.waitForExit()
      #expect(try Self.mismatches(db) == ["0", "0", "0", "0"], "after a kill at ≥ \(threshold) events")
      daemon = try startDaemon(db, environment)
    }
    #expect(try eventually(120, "all \(total) events") { try XPFixture.ledgerCount(db) == total })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try Self.mismatches(db) == ["0", "0", "0", "0"])
    #expect(try db.scalar("SELECT count(*) FROM sluice.outcomes") == String(total))
  }

  @Test func dlqRetryAndDiscardUpdateTheOutcomeAndAReplayWritesNothing() throws {
    let db = try TestDatabase("outcome_dlq")
    try Self.install(db)
    try XPFixture.grant(db, ["ann"])
    let daemon = try startDaemon(db, Self.on.merging(["SLUICE_MAX_ATTEMPTS": "1"]) { $1 })
    try XPFixture.insert(
      db,
      [
        ("later-1", "ann", "later", 1, nil), ("later-2", "bob", "later", 1, nil), ("flaky", "ann", "flaky", 1, nil),
        ("done", "ann", "award", 3, nil),
      ])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 4 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try Self.outcomes(db)["later-1"]?[0] == "dead")
    let deadAt = try db.scalar("SELECT processed_at::text FROM sluice.outcomes WHERE event_id = 'later-1'")

    // Deploy the handler; retry one with outcomes on, the other with them off (its outcome still follows).
    try db.sql(
      """
      CREATE FUNCTION xp.later(e jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO xp.effects VALUES (e->>'id') $$;
      INSERT INTO sluice.handlers VALUES ('later', 'xp.later');
      """)
    let (status, output, errors) = try runCommand(db, ["dlq", "retry", "later-1"], Self.on)
    #expect(status == 0, "\(output)\(errors)")
    let (statusOff, _, errorsOff) = try runCommand(db, ["dlq", "retry", "later-2"])
    #expect(statusOff == 0, "\(errorsOff)")
    let (discarded, _, discardErrors) = try runCommand(db, ["dlq", "discard", "flaky"], Self.on)
    #expect(discarded == 0, "\(discardErrors)")

    let outcomes = try Self.outcomes(db)
    #expect(outcomes["later-1"] == ["applied", nil, "ann", "later"])
    #expect(outcomes["later-2"] == ["applied", nil, "bob", "later"])
    #expect(outcomes["flaky"]?[0] == "rejected")
    #expect(outcomes["flaky"]?[1]?.hasPrefix("discarded from the dead-letter queue; was: ") == true)
    #expect(
      try db.scalar("SELECT processed_at > $1::timestamptz FROM sluice.outcomes WHERE event_id = 'later-1'", [deadAt])
        == "t")
    #expect(try Self.mismatches(db) == ["0", "0", "0", "0"])

    // A replay writes nothing: an outcome retention deleted stays deleted, the others unchanged.
    try db.sql("DELETE FROM sluice.outcomes WHERE event_id = 'done'")
    let before = try db.sql("SELECT event_id, status, processed_at FROM sluice.outcomes ORDER BY 1").rows
    let (replayed, _, replayErrors) = try runCommand(db, ["backfill", "xp.actions"], Self.on)
    #expect(replayed == 0, "\(replayErrors)")
    let again = try startDaemon(db, Self.on)
    try XPFixture.insert(db, [("after", "ann", "award", 1, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 5 })
    again.signal(SIGTERM)
    #expect(again.waitForExit() == 0)
    #expect(
      try db.sql("SELECT event_id, status, processed_at FROM sluice.outcomes WHERE event_id <> 'after' ORDER BY 1").rows
        == before)
  }

  @Test func retentionDeletesOldFinalOutcomesAroundLockedRowsAndKeepsDeadOnes() throws {
    let db = try TestDatabase("outcome_retention")
    try Self.install(db)
    let environment = Self.on.merging(["SLUICE_OUTCOME_RETENTION": "1 hour", "SLUICE_MAX_ATTEMPTS": "1"]) { $1 }
    let daemon = try startDaemon(db, environment.merging(["SLUICE_RETENTION_INTERVAL_S": "0"]) { $1 })
    try XPFixture.insert(db, [("r-dead", "ann", "later", 1, nil)])
    try XPFixture.insert(db, (0..<2500).map { (String(format: "r%04d", $0), "u\($0 % 9)", "mark", 1, nil) })
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 2501 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    // The dead event and 1,500 others two hours old (their actions, ledger rows and outcomes).
    try db.sql(
      """
      UPDATE sluice.event_log SET committed_at = committed_at - interval '2 hours',
                                  processed_at = processed_at - interval '2 hours'
      WHERE event_id < 'r1500' OR event_id = 'r-dead';
      UPDATE sluice.outcomes SET processed_at = processed_at - interval '2 hours'
      WHERE event_id < 'r1500' OR event_id = 'r-dead';
      """)

    let (century, _, centuryErrors) = try runCommand(db, ["status"], ["SLUICE_OUTCOME_RETENTION": "100 years"])
    #expect(century == 0, "the longest retention still counts: \(centuryErrors)")
    let (status, json, _) = try runCommand(db, ["status", "--json"], environment)
    #expect(status == 0)
    #expect(json.contains(#""outcomes":{"on":true,"retention_seconds":3600,"retention_waiting":1500}"#), "\(json)")
    let (_, text, _) = try runCommand(db, ["status"], environment)
    #expect(text.contains("outcomes   on, 1500 rows older than 3600 s waiting to be deleted"), "\(text)")
    let (dry, dryOutput, _) = try runCommand(db, ["compact", "--dry-run"], environment)
    #expect(dry == 0)
    #expect(dryOutput.contains("sluice.outcomes: would delete 1500 rows"), "\(dryOutput)")

    // A client holds one old row locked: retention goes around it, never waits.
    let holder = try PGConnection(conninfo: db.url)
    defer { holder.close() }
    try holder.simpleQuery("BEGIN; SELECT * FROM sluice.outcomes WHERE event_id = 'r0700' FOR UPDATE")
    let port = try freePort()
    let retaining = try startDaemon(
      db, environment.merging(["SLUICE_RETENTION_INTERVAL_S": "1", "SLUICE_METRICS_ADDR": "127.0.0.1:\(port)"]) { $1 })
    let old =
      "SELECT string_agg(event_id, ',' ORDER BY event_id) FROM sluice.outcomes WHERE processed_at < now() - interval '1 hour'"
    #expect(try eventually(30, "old outcomes deleted") { try db.scalar(old) == "r-dead,r0700" })
    try holder.simpleQuery("COMMIT")
    #expect(try eventually(30, "the locked one too") { try db.scalar(old) == "r-dead" })
    var metrics = ""
    #expect(
      try eventually(10, "metrics of the deletes") {
        metrics = try httpGet(port: port, path: "/metrics")
        // The counter moves as rows go, the gauge after the pass.
        return metrics.contains("sluice_outcomes_deleted_rows_total 1500")
          && metrics.contains("sluice_outcomes_retention_backlog_rows 0")
      }, "\(metrics)")
    retaining.signal(SIGTERM)
    #expect(retaining.waitForExit() == 0)
    // Young outcomes, the ledger, the source rows and the effects stay.
    #expect(try db.scalar("SELECT count(*) FROM sluice.outcomes") == "1001")
    #expect(try XPFixture.ledgerCount(db) == 2501)
    #expect(try db.scalar("SELECT count(*) FROM xp.actions") == "2501")
    #expect(try db.scalar("SELECT count(*) FROM xp.effects") == "2500")
  }

  /// An event that went dead while outcomes were off is passed by
  /// retention's walk with no outcome to hold; `dlq discard` with outcomes
  /// on then writes one. It must still go once old enough.
  @Test func anOutcomeWrittenBehindTheWalkStillGoes() throws {
    let db = try TestDatabase("outcome_behind")
    try Self.install(db)
    let hour = ["SLUICE_OUTCOME_RETENTION": "1 hour"]
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "1"])
    try XPFixture.insert(db, [("b-dead", "ann", "later", 1, nil)])
    try XPFixture.insert(db, [("b-young", "ann", "mark", 1, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 2 })
    // The walk goes no further than the slot's confirmed position: wait for
    // the daemon to confirm both (under a loaded full run it had not yet).
    #expect(
      try eventually(30, "the slot to confirm both events") {
        try db.scalar(
          """
          SELECT confirmed_flush_lsn >= (SELECT max(commit_lsn) FROM sluice.event_log)
          FROM pg_replication_slots WHERE slot_name = $1
          """, [db.slot]) == "t"
      })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    try db.sql(
      "UPDATE sluice.event_log SET committed_at = committed_at - interval '2 hours' WHERE event_id = 'b-dead'")
    #expect(try runCommand(db, ["compact"], hour.merging(Self.on) { $1 }).0 == 0)
    #expect(
      try db.scalar("SELECT through_event_id FROM sluice.outcome_retention_state WHERE source = 'xp.actions'")
        == "b-dead", "the walk passed it")
    let (discarded, _, errors) = try runCommand(db, ["dlq", "discard", "b-dead"], Self.on)
    #expect(discarded == 0, "\(errors)")
    #expect(try Self.outcomes(db)["b-dead"]?[0] == "rejected")
    try db.sql("UPDATE sluice.outcomes SET processed_at = processed_at - interval '2 hours' WHERE event_id = 'b-dead'")
    let (_, output, _) = try runCommand(db, ["compact"], hour.merging(Self.on) { $1 })
    #expect(output.contains("sluice.outcomes: deleted 1 rows"), "\(output)")
    #expect(try Self.outcomes(db)["b-dead"] == nil)
  }

  /// Look-alike actors: a composed and a decomposed "josé" are two actors,
  /// and each sees only their own outcome (identities compare byte-wise).
  @Test func lookAlikeActorsSeeOnlyTheirOwnOutcomes() throws {
    let db = try TestDatabase("outcome_lookalike")
    try Self.install(db)
    let composed = "jos\u{E9}"
    let decomposed = "jose\u{301}"
    let daemon = try startDaemon(db, Self.on.merging(["SLUICE_MAX_ATTEMPTS": "1"]) { $1 })
    try db.sql(
      "INSERT INTO xp.actions (id, user_id, type) VALUES ('c1', $1, 'mark'), ('d1', $2, 'mark')",
      [composed, decomposed])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 2 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let reader = Self.role(db, "lookalike")
    try db.sql(
      "CREATE ROLE \(reader); GRANT USAGE ON SCHEMA sluice TO \(reader); GRANT SELECT ON sluice.outcomes TO \(reader)")
    defer { _ = try? db.sql("DROP OWNED BY \(reader); DROP ROLE \(reader)") }
    func seen(_ actor: String) throws -> [[String?]] {
      try db.sql("BEGIN; SET LOCAL ROLE \(reader)")
      defer { _ = try? db.sql("ROLLBACK") }
      try db.sql("SELECT set_config('sluice.actor', $1, true)", [actor])
      return try db.sql("SELECT event_id FROM sluice.outcomes ORDER BY 1").rows
    }
    #expect(try seen(composed) == [["c1"]])
    #expect(try seen(decomposed) == [["d1"]])
    #expect(try seen("jose") == [])
  }

  /// A role for this test's database (roles are cluster-wide).
  static func role(_ db: TestDatabase, _ name: String) -> String { String("\(name)_\(db.slot)".prefix(63)) }

  @Test func aClientRoleSeesOnlyItsActorsOutcomes() throws {
    let db = try TestDatabase("outcome_rls")
    try Self.install(db)
    try XPFixture.grant(db, ["ann", "bob"])
    let daemon = try startDaemon(db, Self.on)
    try XPFixture.insert(
      db,
      [
        ("a1", "ann", "award", 5, nil), ("a2", "ann", "award", 0, nil), ("b1", "bob", "award", 5, nil),
        ("e1", "eve", "award", 5, nil),
      ])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 4 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)

    let reader = Self.role(db, "reader")
    try db.sql(
      """
      CREATE ROLE \(reader) LOGIN;
      GRANT USAGE ON SCHEMA sluice TO \(reader);
      GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON sluice.outcomes TO \(reader);
      """)
    defer { _ = try? db.sql("DROP OWNED BY \(reader); DROP ROLE \(reader)") }
    let client = try PGConnection(conninfo: db.url.replacingOccurrences(of: "//postgres@", with: "//\(reader)@"))
    defer { client.close() }
    func visible() throws -> [String] {
      try client.query("SELECT event_id || ' ' || status FROM sluice.outcomes ORDER BY event_id").rows.map {
        $0[0] ?? ""
      }
    }
    #expect(try visible() == [], "no actor set: nothing")
    try client.simpleQuery("SET sluice.actor = 'ann'")
    #expect(try visible() == ["a1 applied", "a2 rejected"])
    try client.simpleQuery("SET sluice.actor = 'eve'")
    #expect(try visible() == ["e1 denied"])
    try client.simpleQuery("SET sluice.actor = 'bob'")
    #expect(try visible() == ["b1 applied"])
    #expect(try client.query("SELECT count(*) FROM sluice.outcomes WHERE actor = 'ann'").scalar == "0")
    // Nor can it write, change or delete one, even with the privileges.
    #expect(try client.query("UPDATE sluice.outcomes SET status = 'applied' WHERE event_id = 'a2'").affectedRows == 0)
    #expect(try client.query("DELETE FROM sluice.outcomes").affectedRows == 0)
    do {
      try client.query(
        "INSERT INTO sluice.outcomes (source, event_id, actor, status) VALUES ('x', 'y', 'bob', 'applied')")
      Issue.record("a client inserted an outcome")
    } catch let error as PostgresError {
      #expect(error.sqlState == .insufficientPrivilege, "\(error)")
    }
    #expect(try db.scalar("SELECT count(*) FROM sluice.outcomes") == "4")
    #expect(try db.scalar("SELECT status FROM sluice.outcomes WHERE event_id = 'a2'") == "rejected")

    // `sluice check`: row-level security does not stop TRUNCATE, nor the locks write privileges allow.
    let (_, writers, _) = try runCommand(db, ["check"], Self.on)
    #expect(
      writers.contains(
        "FAIL  \(reader) can DELETE, INSERT, TRUNCATE, UPDATE on sluice.outcomes: it can wipe or lock what every client is told"
      ), "\(writers)")
    try db.sql("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON sluice.outcomes FROM \(reader)")
    // A role that may only SELECT is fine; one that bypasses row-level security, or the policy off, is warned of.
    let (fine, fineOutput, _) = try runCommand(db, ["check"], Self.on)
    #expect(fineOutput.contains("ok    this role can write sluice.outcomes"), "\(fineOutput)")
    #expect(!fineOutput.contains("sluice.outcomes: it can"), "\(fineOutput)")
    #expect(fineOutput.contains("ok    outcomes: each role but the owner and superusers reads only its actor's rows"))
    // (Its one warning is the cluster's: track_commit_timestamp is off, CommitOrderTests.)
    #expect(
      !fineOutput.split(separator: "\n").contains { $0.contains("WARN") && !$0.contains("track_commit_timestamp") },
      "\(fineOutput)")
    let bypass = Self.role(db, "sync")
    try db.sql(
      "CREATE ROLE \(bypass) BYPASSRLS; GRANT USAGE ON SCHEMA sluice TO \(bypass); GRANT SELECT ON sluice.outcomes TO \(bypass)"
    )
    defer { _ = try? db.sql("DROP OWNED BY \(bypass); DROP ROLE \(bypass)") }
    try db.sql("ALTER TABLE sluice.outcomes DISABLE ROW LEVEL SECURITY")
    let (warned, output, _) = try runCommand(db, ["check"], Self.on)
    #expect(warned == fine, "warnings do not fail the check: \(output)")
    #expect(output.contains("WARN  outcomes: role \(bypass) can read every actor's outcomes (BYPASSRLS)"), "\(output)")
    #expect(output.contains("WARN  outcomes: row-level security is off on sluice.outcomes"), "\(output)")
    let (_, quiet, _) = try runCommand(db, ["check"])
    #expect(!quiet.contains("outcomes"), "outcomes off: not checked")
    try db.sql("ALTER TABLE sluice.outcomes ENABLE ROW LEVEL SECURITY")

    // Another policy shows rows to its roles and their members; a changed own-actor policy is no policy.
    let crew = Self.role(db, "crew")
    let member = Self.role(db, "member")
    try db.sql(
      """
      CREATE ROLE \(crew); CREATE ROLE \(member) IN ROLE \(crew);
      GRANT USAGE ON SCHEMA sluice TO \(crew); GRANT SELECT ON sluice.outcomes TO \(crew);
      CREATE POLICY outcomes_crew ON sluice.outcomes FOR SELECT TO \(crew) USING (true);
      ALTER POLICY outcomes_own_actor ON sluice.outcomes USING (actor = current_setting('sluice.actor', true) OR true);
      """)
    defer { _ = try? db.sql("DROP OWNED BY \(member), \(crew); DROP ROLE \(member); DROP ROLE \(crew)") }
    let (_, policies, _) = try runCommand(db, ["check"], Self.on)
    #expect(
      policies.contains(
        "WARN  outcomes: policy outcomes_crew on sluice.outcomes also lets \(crew), \(member) read rows"),
      "\(policies)")
    #expect(
      policies.contains("WARN  outcomes: policy outcomes_own_actor on sluice.outcomes was changed to"), "\(policies)")
    #expect(!policies.contains("\(reader) read rows"), "the own-actor policy is not reported as another")
  }

  @Test func theOutcomesPublicationCarriesTheTable() throws {
    let db = try TestDatabase("outcome_pub")
    try Self.install(db)
    let environment = Self.on.merging(["SLUICE_OUTCOMES_PUBLICATION": "powersync"]) { $1 }
    let published = """
      SELECT string_agg(pubname, ',' ORDER BY pubname) FROM pg_publication_tables
      WHERE schemaname = 'sluice' AND tablename = 'outcomes'
      """
    #expect(try db.scalar(published) == nil)
    let (_, before, _) = try runCommand(db, ["check"], environment)
    #expect(before.contains("FAIL  outcomes are in publication powersync"), "\(before)")
    let (migrated, _, errors) = try runCommand(db, ["migrate"], environment)
    #expect(migrated == 0, "\(errors)")
    #expect(try db.scalar(published) == "powersync")
    // An existing publication gains the table when the daemon starts.
    try db.sql("CREATE PUBLICATION electric_like FOR TABLE xp.noise")
    let daemon = try startDaemon(db, environment.merging(["SLUICE_OUTCOMES_PUBLICATION": "electric_like"]) { $1 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try db.scalar(published) == "electric_like,powersync")
    let (_, after, _) = try runCommand(db, ["check"], environment)
    #expect(after.contains("ok    outcomes are in publication powersync"), "\(after)")
    // Never the daemon's own publication: it would stream its own outcomes.
    let (refused, _, why) = try runCommand(db, ["run"], ["SLUICE_OUTCOMES_PUBLICATION": "sluice"])
    #expect(refused == 78)
    #expect(why.contains("SLUICE_OUTCOMES_PUBLICATION"))
  }

  /// docs/outcomes.md: its quoted API grant, Electric
  /// shape and PowerSync data query, run against real outcomes.
  @Test func theReadmesOutcomeSnippetsGiveEachUserTheirOwn() throws {
    let folder = ExamplesTests.repository.appendingPathComponent("Tests/SluiceTests/ReadmeExamples")
    let readme = try String(
      contentsOf: ExamplesTests.repository.appendingPathComponent("docs/outcomes.md"), encoding: .utf8)
    var snippets: [String: String] = [:]
    for file in ["outcomes_api.sql", "outcomes_electric.txt", "outcomes_powersync.yaml"] {
      let text = try String(contentsOf: folder.appendingPathComponent(file), encoding: .utf8)
      #expect(readme.contains(text), "docs/outcomes.md must quote ReadmeExamples/\(file) verbatim")
      snippets[file] = text
    }
    let db = try TestDatabase("outcome_readme")
    try Self.install(db)
    try XPFixture.grant(db, ["ann", "bob"])
    let daemon = try startDaemon(db, Self.on)
    try XPFixture.insert(
      db, [("a1", "ann", "award", 5, nil), ("a2", "ann", "award", 0, nil), ("b1", "bob", "award", 5, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)

    // The API role, with the pre-request function as PostgREST calls it for ann's request.
    let role = Self.role(db, "app_user")
    try db.sql(try #require(snippets["outcomes_api.sql"]).replacingOccurrences(of: "app_user", with: role))
    defer { _ = try? db.sql("DROP OWNED BY \(role); DROP ROLE \(role)") }
    try db.sql("BEGIN; SET LOCAL ROLE \(role)")
    try db.sql(#"SELECT set_config('request.jwt.claims', '{"sub": "ann", "role": "authenticated"}', true)"#)
    try db.sql("SELECT public.outcomes_actor()")
    let seen = try db.sql("SELECT event_id, status FROM sluice.outcomes ORDER BY 1").rows
    try db.sql("COMMIT")
    #expect(seen == [["a1", "applied"], ["a2", "rejected"]])

    // The Electric shape's where clause, with ann as its parameter.
    let electric = try #require(snippets["outcomes_electric.txt"]).split(separator: "\n")
    let table = try #require(electric.first { $0.hasPrefix("table=") }).dropFirst(6)
    let condition = try #require(electric.first { $0.hasPrefix("where=") }).dropFirst(6)
    #expect(
      try db.sql("SELECT string_agg(event_id, ',' ORDER BY event_id) FROM \(table) WHERE \(condition)", ["ann"]).rows
        == [["a1,a2"]])

    // PowerSync's data query for bob's bucket: one row each, with a unique id.
    let yaml = try #require(snippets["outcomes_powersync.yaml"])
    let query = try #require(yaml.split(separator: "\n").first { $0.contains("- SELECT") })
      .split(separator: "- ", maxSplits: 1)[1].replacingOccurrences(of: "bucket.actor", with: "$1")
    #expect(
      try db.sql("SELECT id, event_id, status FROM (\(query)) q", ["bob"]).rows == [["xp.actions/b1", "b1", "applied"]])
  }

  /// An install whose daemon role was never granted outcomes (roles.sql
  /// not run again after the upgrade): with outcomes on, `check` fails and
  /// `run` stops before any event, so none goes dead for it; with outcomes
  /// off, nothing about outcomes stands in the way.
  @Test func aDaemonRoleThatCannotWriteOutcomesStopsBeforeAnyEvent() throws {
    let db = try TestDatabase("outcome_grants")
    try Self.install(db)
    try XPFixture.grant(db, ["ann"])
    let roles = try String(
      contentsOf: ExamplesTests.repository.appendingPathComponent("sql/roles.sql"), encoding: .utf8)
    try db.sql(roles)
    try db.sql(
      """
      GRANT USAGE ON SCHEMA xp TO sluice_daemon;
      GRANT SELECT ON xp.actions TO sluice_daemon;
      GRANT SELECT, INSERT, UPDATE ON xp.totals, xp.effects TO sluice_daemon;
      REVOKE ALL ON sluice.outcomes FROM sluice_daemon;
      DROP POLICY outcomes_daemon ON sluice.outcomes;
      """)
    let asDaemon = ["SLUICE_DATABASE_URL": db.url.replacingOccurrences(of: "//postgres@", with: "//sluice_daemon@")]
    let on = asDaemon.merging(Self.on) { $1 }
    try XPFixture.insert(db, [("g1", "ann", "award", 5, nil)])

    let (checked, output, _) = try runCommand(db, ["check"], on)
    #expect(checked == 1)
    #expect(output.contains("FAIL  this role can write sluice.outcomes: "), "\(output)")
    let (ran, _, why) = try runCommand(db, ["run"], on)
    #expect(ran != 0 && ran != nil)
    #expect(why.contains("SLUICE_OUTCOMES=on, but this role cannot write sluice.outcomes"), "\(why)")
    #expect(try XPFixture.ledgerCount(db) == 0, "no event was tried")

    // Off: the daemon, status, compact and dlq run as before.
    let off = try startDaemon(db, asDaemon)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 1 })
    off.signal(SIGTERM)
    #expect(off.waitForExit() == 0, "\(off.standardError)")
    #expect(!off.standardError.contains("outcome retention failed"))
    for command in [["status"], ["compact"], ["dlq", "list"]] {
      let (status, _, errors) = try runCommand(db, command, asDaemon)
      #expect(status == 0, "\(command): \(errors)")
    }

    // Granted again: outcomes on, and the next event has its outcome.
    try db.sql(roles)
    let again = try startDaemon(db, on)
    try XPFixture.insert(db, [("g2", "ann", "award", 5, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 2 })
    again.signal(SIGTERM)
    #expect(again.waitForExit() == 0)
    #expect(try Self.outcomes(db)["g2"] == ["applied", nil, "ann", "award"])
    #expect(try XPFixture.statuses(db) == ["g1": "applied", "g2": "applied"])
    // roles.sql lets the daemon's role run retention (the soak found it could not).
    try db.sql(
      "UPDATE sluice.sources SET retain = '0 seconds' WHERE relation = 'xp.actions'; GRANT DELETE ON xp.actions TO sluice_daemon"
    )
    let (compacted, compactOutput, compactErrors) = try runCommand(db, ["compact"], asDaemon)
    #expect(compacted == 0, "\(compactErrors)")
    #expect(compactOutput.contains("xp.actions: deleted 1 rows"), "\(compactOutput)\(compactErrors)")
    #expect(try db.sql("SELECT id FROM xp.actions").rows == [["g1"]], "g1 was backfilled: kept 5 minutes longer")
  }
}
