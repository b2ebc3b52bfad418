import Foundation
import Sluice
import SluicePostgres
import Testing

@Suite(.serialized) struct PipelineTests {
  @Test func exactlyOnceAcrossRepeatedKills() throws {
    let seed = testSeed(default: 20_261_124)
    var random = SeededGenerator(seed: seed)
    let db = try TestDatabase("crash")
    try XPFixture.install(db)
    let players = (0..<40).map { "u\($0)" }
    try XPFixture.grant(db, players)
    // 24,000 events in 240 source transactions of 100; u40…u47 hold no role (denied).
    var transactions: [[(String, String, String, Int, String?)]] = []
    var expected: [String: Int] = [:]
    var allowed = 0
    for t in 0..<240 {
      transactions.append(
        (0..<100).map { r in
          let number = Int.random(in: 0..<48, using: &random)
          let user = "u\(number)"
          let xp = Int.random(in: 1...100, using: &random)
          if number < 40 {
            expected[user, default: 0] += xp
            allowed += 1
          }
          return (String(format: "e%05d", t * 100 + r), user, "award", xp, nil)
        })
    }
    let environment = ["SLUICE_BATCH_SIZE": "300"]
    try createSlot(db, environment)
    for transaction in transactions[..<160] { try XPFixture.insert(db, transaction) }
    var daemon = try startDaemon(db, environment)
    let thresholds = (0..<6).map { _ in Int.random(in: 500..<15_000, using: &random) }.sorted()
    print("kill thresholds: \(thresholds)")
    for (index, threshold) in thresholds.enumerated() {
      #expect(try eventually(60, "ledger ≥ \(threshold)") { try XPFixture.ledgerCount(db) >= threshold })
      daemon.signal(SIGKILL)
      #expect(daemon.waitForExit() != 0)
      if index == 2 {
        // Writers go on while the daemon is down.
        for transaction in transactions[160..<200] { try XPFixture.insert(db, transaction) }
      }
      daemon = try startDaemon(db, environment)
    }
    for transaction in transactions[200...] { try XPFixture.insert(db, transaction) }
    #expect(try eventually(120, "all 24,000 events in the ledger") { try XPFixture.ledgerCount(db) >= 24_000 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")

    #expect(try XPFixture.ledgerCount(db) == 24_000, "one ledger row per source row")
    #expect(try db.scalar("SELECT count(*) FROM xp.actions a JOIN sluice.event_log l ON l.event_id = a.id") == "24000")
    let byStatus = Dictionary(
      uniqueKeysWithValues: try db.sql("SELECT status, count(*) FROM sluice.event_log GROUP BY status").rows.map {
        ($0[0] ?? "", Int($0[1] ?? "") ?? 0)
      })
    #expect(byStatus == ["applied": allowed, "denied": 24_000 - allowed])
    let totals = try XPFixture.totals(db)
    #expect(totals == expected, "XP totals equal the sums of the allowed actions")
  }

  @Test func killedDuringTheInitialBackfill() throws {
    let db = try TestDatabase("killbackfill")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["u1", "u2"])
    // Written before any slot: the first start backfills them in the slot's snapshot.
    for t in 0..<50 {
      try XPFixture.insert(
        db, (0..<100).map { (String(format: "b%05d", t * 100 + $0), $0 % 2 == 0 ? "u1" : "u2", "award", 3, nil) })
    }
    let environment = ["SLUICE_BATCH_SIZE": "100"]
    let first = try sluice(db, ["run"], environment)
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) >= 1_000 })
    first.signal(SIGKILL)
    #expect(first.waitForExit() != 0)
    print("killed with \(try XPFixture.ledgerCount(db)) of 5000 rows backfilled")
    let second = try startDaemon(db, environment)
    try XPFixture.insert(db, [("after", "u1", "award", 1000, nil)])
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 5_001 })
    second.signal(SIGTERM)
    #expect(second.waitForExit() == 0)
    #expect(try XPFixture.totals(db) == ["u1": 8_500, "u2": 7_500])
  }

  @Test func permissionsAreJudgedAsOfTheWALPosition() throws {
    let db = try TestDatabase("asof")
    try XPFixture.install(db)
    var daemon = try startDaemon(db)
    try XPFixture.insert(db, [("before-grant", "dave", "award", 1, nil)])
    try XPFixture.grant(db, ["dave"])
    try XPFixture.insert(db, [("after-grant", "dave", "award", 10, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 2 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    // While the daemon is down: an event while dave is a player, then the revoke, then one after it.
    try XPFixture.insert(db, [("before-revoke", "dave", "award", 100, nil)])
    try db.sql("DELETE FROM sluice.actor_roles WHERE actor = 'dave'")
    try XPFixture.insert(db, [("after-revoke", "dave", "award", 1000, nil)])
    // A grant and an event in one transaction: the grant, earlier in it, counts.
    try db.sql(
      """
      BEGIN;
      INSERT INTO sluice.actor_roles (actor, role, scope) VALUES ('erin', 'player', NULL);
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES ('same-transaction', 'erin', 'award', '{"xp": 5}');
      COMMIT;
      """)
    daemon = try startDaemon(db)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 5 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    let statuses = try XPFixture.statuses(db)
    #expect(
      statuses == [
        "before-grant": "denied", "after-grant": "applied", "before-revoke": "applied", "after-revoke": "denied",
        "same-transaction": "applied",
      ])
    #expect(try XPFixture.totals(db) == ["dave": 110, "erin": 5])
    let reason = try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'after-revoke'") ?? ""
    #expect(reason.contains("award") && reason.contains("dave"), "the reason names type and actor: \(reason)")
  }

  @Test func dedupeKeysCountOnceAndDeniedEventsOwnNone() throws {
    let db = try TestDatabase("dedupe")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["alice"])
    let daemon = try startDaemon(db)
    // The same action synced from two clients, in two transactions, and twice in a third.
    try XPFixture.insert(db, [("phone", "alice", "award", 10, "quest-1")])
    try XPFixture.insert(db, [("laptop", "alice", "award", 10, "quest-1")])
    try XPFixture.insert(
      db, [("tablet-a", "alice", "award", 7, "quest-2"), ("tablet-b", "alice", "award", 7, "quest-2")])
    // carol may not award yet: her denied event must not take the key.
    try XPFixture.insert(db, [("carol-denied", "carol", "award", 3, "quest-1")])
    try XPFixture.grant(db, ["carol"])
    try XPFixture.insert(db, [("carol-allowed", "carol", "award", 3, "quest-1")])
    // Same key, other type: a different key.
    try db.sql(
      "INSERT INTO xp.actions (id, user_id, type, dedupe_key) VALUES ('other-type', 'alice', 'later', 'quest-1')")
    // Updates and deletes of a source are not events.
    try db.sql("UPDATE xp.actions SET payload = '{\"xp\": 999}' WHERE id = 'phone'")
    try db.sql("DELETE FROM xp.actions WHERE id = 'laptop'")
    // A malformed row: an empty type.
    try db.sql("INSERT INTO xp.actions (id, user_id, type) VALUES ('no-type', 'alice', '')")
    #expect(try eventually { try XPFixture.ledgerCount(db) == 8 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    #expect(
      try XPFixture.statuses(db) == [
        "phone": "applied", "laptop": "duplicate", "tablet-a": "applied", "tablet-b": "duplicate",
        "carol-denied": "denied", "carol-allowed": "applied", "other-type": "dead", "no-type": "rejected",
      ])
    #expect(try XPFixture.totals(db) == ["alice": 17, "carol": 3])
    let reason = try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'laptop'") ?? ""
    #expect(reason.contains("quest-1") && reason.contains("phone"))
    #expect(try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'no-type'")?.contains("empty") == true)
  }

  /// A batch sent ahead fails, and its redo keeps meeting a ledger conflict
  /// (a row "standing" where one of its events goes, four times): the redo
  /// ran inside the next batch's lookups, whose own conflict handling took
  /// the redo's for its own, looked itself up again and committed past the
  /// batch, whose 40 events were never applied. The session now starts over
  /// from the last acknowledged position.
  @Test func aSentAheadBatchWhoseRedoConflictsIsNotSkipped() throws {
    let db = try TestDatabase("redo_conflict")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    let environment = ["SLUICE_BATCH_SIZE": "40"]
    try createSlot(db, environment)
    // The ledger row of r0120 meets a unique violation the first four times it is written.
    try db.sql(
      """
      CREATE SEQUENCE public.trips;
      CREATE FUNCTION public.trip() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF nextval('public.trips') <= 4 THEN
          RAISE EXCEPTION 'a ledger row stood here (test)' USING ERRCODE = 'unique_violation';
        END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER trip BEFORE INSERT ON sluice.event_log
        FOR EACH ROW WHEN (NEW.event_id = 'r0120') EXECUTE FUNCTION public.trip();
      """)
    // 500 events in 5 transactions; every one has a dedupe key, so every
    // batch looks keys up, reading the batch sent before it first.
    for t in 0..<5 {
      try XPFixture.insert(
        db, (0..<100).map { r in (String(format: "r%04d", t * 100 + r), "ann", "award", 1, "k\(t * 100 + r)") })
    }
    let daemon = try startDaemon(db, environment)
    #expect(try eventually(60, "500 ledger rows") { try XPFixture.ledgerCount(db) == 500 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'applied'") == "500")
    #expect(try XPFixture.totals(db) == ["ann": 500])
    // The path was taken: r0120 was refused four times, then written.
    #expect(try db.scalar("SELECT last_value FROM public.trips") == "5")
    #expect(daemon.standardError.contains("a batch sent ahead could not be redone"), "\(daemon.standardError)")
  }

  @Test func deadLettersDoNotBlockAndRetryAppliesOnce() throws {
    let db = try TestDatabase("dead")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["bob"])
    let environment = ["SLUICE_MAX_ATTEMPTS": "3"]
    let daemon = try startDaemon(db, environment)
    try XPFixture.insert(db, [("broken", "bob", "flaky", 0, nil), ("after-broken", "bob", "award", 5, nil)])
    try XPFixture.insert(db, [("unhandled", "bob", "later", 50, nil)])
    try XPFixture.insert(db, [("after-unhandled", "bob", "award", 6, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 4 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    #expect(
      try XPFixture.statuses(db) == [
        "broken": "dead", "after-broken": "applied", "unhandled": "dead", "after-unhandled": "applied",
      ])
    let broken = try db.sql("SELECT attempts, reason FROM sluice.event_log WHERE event_id = 'broken'").rows.first
    #expect(broken?[0] == "3")
    #expect(broken?[1]?.contains("flaky handler is broken") == true)
    #expect(try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'unhandled'") == "no handler for later")
    #expect(try XPFixture.totals(db) == ["bob": 11])

    let (listStatus, list, _) = try runCommand(db, ["dlq", "list"], environment)
    #expect(listStatus == 0)
    #expect(list.contains("broken") && list.contains("unhandled"))

    // Still broken: retry leaves it dead and says so.
    let (failedRetry, failedOutput, _) = try runCommand(db, ["dlq", "retry", "broken"], environment)
    #expect(failedRetry == 1)
    #expect(failedOutput.contains("dead"))

    // Fix the handler, deploy the missing one, retry everything: each applies once.
    try db.sql("UPDATE xp.switches SET failing = false")
    try db.sql("INSERT INTO sluice.handlers VALUES ('later', 'xp.award')")
    let (retryStatus, retried, retryErrors) = try runCommand(db, ["dlq", "retry", "--all"], environment)
    #expect(retryStatus == 0, "\(retried) \(retryErrors)")
    #expect(retried.contains("xp.actions/broken: applied"))
    #expect(retried.contains("xp.actions/unhandled: applied"))
    let (_, again, _) = try runCommand(db, ["dlq", "retry", "--all"], environment)
    #expect(again.contains("no dead events"))
    #expect(try XPFixture.totals(db) == ["bob": 1061])
    // 3 by the daemon, 3 by the retry while still broken, 1 that applied.
    #expect(try db.scalar("SELECT attempts FROM sluice.event_log WHERE event_id = 'broken'") == "7")

    // Discard: a dead event becomes rejected with its reason kept.
    try db.sql("UPDATE xp.switches SET failing = true")
    try XPFixture.insert(db, [("broken-again", "bob", "flaky", 0, nil)])
    let restarted = try startDaemon(db, environment)
    #expect(try eventually { try XPFixture.statuses(db)["broken-again"] == "dead" })
    restarted.signal(SIGTERM)
    #expect(restarted.waitForExit() == 0, "\(restarted.standardError)")
    let (discardStatus, _, _) = try runCommand(db, ["dlq", "discard", "broken-again"], environment)
    #expect(discardStatus == 0)
    #expect(try XPFixture.statuses(db)["broken-again"] == "rejected")
    #expect(
      try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'broken-again'")?.contains(
        "flaky handler is broken")
        == true)
  }

  @Test func idleSourcesDoNotPinWAL() throws {
    let db = try TestDatabase("idle")
    try XPFixture.install(db)
    let daemon = try startDaemon(db)
    // Only a table outside the publication is written.
    let before =
      try db.scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", [db.slot]) ?? ""
    for round in 0..<20 { try db.sql("INSERT INTO xp.noise (note) VALUES ('round \(round)')") }
    let target = try db.scalar("SELECT pg_current_wal_lsn()::text") ?? ""
    #expect(
      try eventually(30, "confirmed_flush_lsn to pass \(target)") {
        try db.scalar(
          "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1", [db.slot, target])
          == "t"
      })
    let after =
      try db.scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", [db.slot]) ?? ""
    #expect(parseLSN(after)! > parseLSN(before)!)
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
  }

  @Test func backfillProcessesRowsOlderThanTheSlotOnce() throws {
    let db = try TestDatabase("backfill")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["fred"])
    // Rows written before any slot exists.
    try XPFixture.insert(db, (1...250).map { (String(format: "old-%03d", $0), "fred", "award", 2, nil) })
    let (status, output, errors) = try runCommand(db, ["backfill", "xp.actions"], ["SLUICE_BATCH_SIZE": "100"])
    #expect(status == 0, "\(errors)")
    #expect(output.contains("processed 250 rows"))
    #expect(try XPFixture.totals(db) == ["fred": 500])
    // Backfill again: nothing left to do.
    let (_, second, _) = try runCommand(db, ["backfill", "xp.actions"])
    #expect(second.contains("processed 0 rows"))
    // More old rows, then the daemon creates the slot: its own backfill takes only the new ones.
    try XPFixture.insert(db, [("old-251", "fred", "award", 2, nil)])
    let daemon = try startDaemon(db)
    try XPFixture.insert(db, [("new-1", "fred", "award", 1000, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 252 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    #expect(try XPFixture.totals(db) == ["fred": 1502])
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE commit_lsn IS NULL") == "251")
    // Not a source: a clear error.
    let (badStatus, _, badErrors) = try runCommand(db, ["backfill", "xp.noise"])
    #expect(badStatus == 1)
    #expect(badErrors.contains("not a source"))
  }

  @Test func migrateTwiceIsANoOpAndRunRefusesAnUnmigratedDatabase() throws {
    let db = try TestDatabase("migrate")
    let (status, _, errors) = try runCommand(db, ["run"])
    #expect(status == 1)
    #expect(errors.contains("sluice migrate"))
    let (first, output, _) = try runCommand(db, ["migrate"])
    #expect(first == 0)
    #expect(output.contains("applied 001_schema, 002_ledger_high_water"))
    let (second, again, _) = try runCommand(db, ["migrate"])
    #expect(second == 0)
    #expect(again.contains("up to date"))
    #expect(try db.scalar("SELECT count(*) FROM sluice.schema_migrations") == "10")
    #expect(
      try db.scalar("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'sluice' AND schemaname = 'sluice'")
        == "5")
  }
}
