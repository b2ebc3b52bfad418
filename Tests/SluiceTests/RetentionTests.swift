import Foundation
import Sluice
import SluicePostgres
import Testing

/// SPEC section 10: processed source rows deleted once final; the ledger
/// and the derived state untouched; never beyond the slot, never by a standby.
@Suite struct RetentionTests {
  static func rows(_ db: TestDatabase) throws -> [String] {
    try db.sql("SELECT id FROM xp.actions ORDER BY id").rows.map { $0[0] ?? "" }
  }

  static func compact(_ db: TestDatabase, dryRun: Bool = false) throws -> String {
    let (status, output, error) = try runCommand(db, ["compact"] + (dryRun ? ["--dry-run"] : []))
    #expect(status == 0, "\(error)")
    return output.trimmingCharacters(in: .whitespacesAndNewlines)
  }

  /// Waits until the slot has confirmed everything written so far.
  static func caughtUp(_ db: TestDatabase, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let target = try #require(try db.scalar("SELECT pg_current_wal_lsn()::text"))
    #expect(
      try eventually(20, "the slot to confirm \(target)", sourceLocation: sourceLocation) {
        try db.scalar(
          "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = $2", [target, db.slot])
          == "t"
      }, sourceLocation: sourceLocation)
  }

  @Test func finalRowsGoAfterRetainDeadOnesOnceResolvedReplaysAndKeysStay() throws {
    let db = try TestDatabase("retention_rules")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann", "bob"])
    let daemon = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "0", "SLUICE_MAX_ATTEMPTS": "1"])
    try XPFixture.insert(
      db,
      [
        ("applied", "ann", "award", 5, "k1"), ("rejected", "ann", "award", 0, nil), ("denied", "eve", "award", 5, nil),
        ("dup", "ann", "award", 5, "k1"), ("dead", "bob", "flaky", 1, nil),
      ])
    let expected = [
      "applied": "applied", "rejected": "rejected", "denied": "denied", "dup": "duplicate", "dead": "dead",
    ]
    #expect(try eventually(20, "the ledger") { try XPFixture.statuses(db) == expected })
    let totals = try XPFixture.totals(db)
    #expect(totals == ["ann": 5])

    // Younger than retain: nothing goes.
    try db.sql("UPDATE sluice.sources SET retain = '1 hour' WHERE relation = 'xp.actions'")
    #expect(try Self.compact(db) == "xp.actions: deleted 0 rows")
    #expect(try Self.rows(db).count == 5)

    // Older than retain: every final status goes, the dead one stays; the dry run counts the same.
    try db.sql("UPDATE sluice.sources SET retain = '0 seconds' WHERE relation = 'xp.actions'")
    try Self.caughtUp(db)
    #expect(try Self.compact(db, dryRun: true) == "xp.actions: would delete 4 rows")
    #expect(try Self.rows(db).count == 5)
    let (_, status, _) = try runCommand(db, ["status", "--json"])
    #expect(status.contains(#""retention_waiting":{"xp.actions":4}"#), "\(status)")
    #expect(try Self.compact(db) == "xp.actions: deleted 4 rows")
    #expect(try Self.rows(db) == ["dead"])
    #expect(try Self.compact(db) == "xp.actions: deleted 0 rows")

    // Not events: the derived state and the ledger are as they were.
    #expect(try XPFixture.statuses(db) == expected)
    #expect(try XPFixture.totals(db) == totals)

    // A deleted id inserted again is a replay; a deleted row's dedupe key is still owned.
    try XPFixture.insert(db, [("applied", "ann", "award", 50, nil)])
    try XPFixture.insert(db, [("again", "ann", "award", 7, "k1"), ("marker", "bob", "award", 1, nil)])
    #expect(try eventually(20) { try XPFixture.statuses(db)["marker"] == "applied" })
    #expect(try XPFixture.statuses(db)["again"] == "duplicate")
    #expect(try XPFixture.ledgerCount(db) == 7)
    #expect(try XPFixture.totals(db) == ["ann": 5, "bob": 1])

    // The dead event's row goes once it is resolved.
    try db.sql("UPDATE xp.switches SET failing = false")
    #expect(try runCommand(db, ["dlq", "retry", "dead"]).0 == 0)
    try Self.caughtUp(db)
    // dead, again and marker; and the replayed id's row, whose retain has passed since its own
    // commit (SPEC 10; found on main: it had no ledger row, so no walk ever reached it).
    #expect(try Self.compact(db) == "xp.actions: deleted 4 rows")
    #expect(try Self.rows(db) == [])
    #expect(try db.scalar("SELECT count(*) FROM sluice.retention_replays") == "0")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// SPEC 10: a replay's row goes once `retain` has passed since its own
  /// commit, not its first's, and a replay of a dead event's id stays until
  /// the event is resolved. Sources without `retain` note no replays.
  @Test func aReplaysRowGoesOnceItsOwnRetainHasPassed() throws {
    let db = try TestDatabase("retention_replays")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann", "bob"])
    try db.sql("CREATE TABLE xp.kept (LIKE xp.actions INCLUDING ALL)")
    try db.sql(
      "SELECT sluice.add_source('xp.kept', actor_column => 'user_id', event_type_column => 'type', actor_from => 'column')"
    )
    try db.sql("UPDATE sluice.sources SET retain = '1 hour' WHERE relation = 'xp.actions'")
    let daemon = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "0", "SLUICE_MAX_ATTEMPTS": "1"])
    try XPFixture.insert(db, [("first", "ann", "award", 5, nil), ("broken", "bob", "flaky", 1, nil)])
    try db.sql("INSERT INTO xp.kept (id, user_id, type, payload) VALUES ('k', 'ann', 'award', '{\"xp\": 1}')")
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    // Their retain passed: the rows go; the dead one stays.
    try db.sql("UPDATE sluice.event_log SET committed_at = committed_at - interval '2 hours'")
    try Self.caughtUp(db)
    #expect(try Self.compact(db) == "xp.actions: deleted 1 rows")
    // The same ids again (and the kept source's, which has no retain): replays, noted.
    try XPFixture.insert(db, [("first", "ann", "award", 50, nil)])
    try db.sql("DELETE FROM xp.actions WHERE id = 'broken'")
    try XPFixture.insert(db, [("broken", "bob", "flaky", 1, nil), ("marker", "ann", "award", 1, nil)])
    try db.sql(
      "DELETE FROM xp.kept; INSERT INTO xp.kept (id, user_id, type, payload) VALUES ('k', 'ann', 'award', '{\"xp\": 1}')"
    )
    #expect(try eventually { try XPFixture.statuses(db)["marker"] == "applied" })
    try Self.caughtUp(db)
    #expect(
      try db.sql("SELECT source, event_id FROM sluice.retention_replays ORDER BY 2").rows == [
        ["xp.actions", "broken"], ["xp.actions", "first"],
      ])
    // Younger than retain since their own commit: they stay.
    #expect(try Self.compact(db) == "xp.actions: deleted 0 rows")
    #expect(try Self.rows(db) == ["broken", "first", "marker"])
    // Old enough: the replay of a final event goes; the dead one's replay waits for it.
    try db.sql("UPDATE sluice.retention_replays SET committed_at = committed_at - interval '2 hours'")
    let (_, status, _) = try runCommand(db, ["status", "--json"])
    #expect(status.contains(#""retention_waiting":{"xp.actions":1}"#), "the final one's replay: \(status)")
    #expect(try Self.compact(db) == "xp.actions: deleted 1 rows")
    #expect(try Self.rows(db) == ["broken", "marker"])
    try db.sql("UPDATE xp.switches SET failing = false")
    #expect(try runCommand(db, ["dlq", "retry", "broken"]).0 == 0)
    try db.sql("UPDATE sluice.event_log SET committed_at = committed_at - interval '2 hours' WHERE event_id = 'broken'")
    try Self.caughtUp(db)
    #expect(try Self.compact(db) == "xp.actions: deleted 1 rows")
    #expect(try Self.rows(db) == ["marker"])
    #expect(try db.scalar("SELECT count(*) FROM sluice.retention_replays") == "0")
    #expect(try XPFixture.totals(db) == ["ann": 7, "bob": 1000], "first, marker and k; the replays changed nothing")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// Attack review: rows that cannot be deleted stay, and the walk goes on; names and ids are taken exactly.
  @Test func aRowThatCannotGoNeverStopsTheWalk() throws {
    let db = try TestDatabase("retention_hostile")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql(
      """
      CREATE TABLE xp.refs (action_id text REFERENCES xp.actions (id));
      CREATE TABLE xp."Mixed" (id text PRIMARY KEY, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}');
      CREATE TABLE xp.nums (id numeric, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}');
      ALTER TABLE xp.nums REPLICA IDENTITY FULL;
      CREATE TABLE xp.nokey (id text, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}');
      SELECT sluice.add_source('xp."Mixed"', actor_column => 'user_id', event_type_column => 'type', retain => '0 s');
      SELECT sluice.add_source('xp.nums', actor_column => 'user_id', event_type_column => 'type', retain => '0 s');
      SELECT sluice.add_source('xp.nokey', actor_column => 'user_id', event_type_column => 'type', retain => '0 s');
      UPDATE sluice.sources SET retain = '0 s' WHERE relation = 'xp.actions';
      """)
    let daemon = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "0", "SLUICE_MAX_ATTEMPTS": "1"])
    try XPFixture.insert(db, [("kept", "ann", "award", 1, nil), ("gone", "ann", "award", 1, nil)])
    try db.sql(
      """
      INSERT INTO xp.refs VALUES ('kept');
      INSERT INTO xp."Mixed" (id, user_id, type, payload) VALUES ('m1', 'ann', 'award', '{"xp": 1}');
      INSERT INTO xp.nums (id, user_id, type, payload) VALUES (1.0, 'ann', 'award', '{"xp": 1}'), (1.00, 'ann', 'flaky', '{}');
      INSERT INTO xp.nokey (id, user_id, type, payload) VALUES ('n1', 'ann', 'award', '{"xp": 1}');
      """)
    #expect(try eventually(20) { try XPFixture.ledgerCount(db) == 6 })
    try Self.caughtUp(db)
    let (status, output, error) = try runCommand(db, ["compact"])
    #expect(status == 0, "\(error)")
    #expect(
      output.split(separator: "\n").sorted() == [
        "xp.Mixed: deleted 1 rows", "xp.actions: deleted 1 rows", "xp.nokey: deleted 0 rows",
        "xp.nums: deleted 1 rows",
      ], "\(output)")
    #expect(error.contains("xp.actions: some rows could not be deleted and stay"), "\(error)")
    #expect(error.contains("xp.nokey: some rows could not be deleted and stay"), "\(error)")
    #expect(try Self.rows(db) == ["kept"])
    #expect(try db.sql("SELECT id::text FROM xp.nums").rows == [["1.00"]])  // the dead event's row, not 1.0's
    #expect(try db.scalar(#"SELECT count(*) FROM xp."Mixed""#) == "0")
    // The next pass goes on from where this one stopped: nothing left to try.
    #expect(try runCommand(db, ["compact"]).0 == 0)
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// Review: only an event's own row goes. A second row with the same id
  /// (a replay's, on a source whose id is not unique) is not an event, so
  /// neither goes; and a ledger row without a commit time (the minimal dead
  /// row written when an event's own ledger row could not be) does not stop
  /// the walk for the events after it.
  @Test func onlyAnEventsOwnRowGoesAndAMinimalDeadRowStopsNothing() throws {
    let db = try TestDatabase("retention_own_row")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql(
      """
      CREATE TABLE xp.dups (id text, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}');
      ALTER TABLE xp.dups REPLICA IDENTITY FULL;
      SELECT sluice.add_source('xp.dups', actor_column => 'user_id', event_type_column => 'type', retain => '0 s');
      UPDATE sluice.sources SET retain = '0 s' WHERE relation = 'xp.actions';
      INSERT INTO sluice.event_log (source, event_id, event_type, actor, status, reason, attempts, commit_lsn)
      VALUES ('xp.actions', 'ghost', 'award', 'ann', 'dead', 'its ledger row could not be written', 1, '0/1');
      """)
    let daemon = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "0"])
    try db.sql(
      """
      INSERT INTO xp.dups VALUES ('d1', 'ann', 'award', '{"xp": 1}'), ('u1', 'ann', 'award', '{"xp": 1}');
      INSERT INTO xp.dups VALUES ('d1', 'ann', 'award', '{"xp": 100}');
      """)
    try XPFixture.insert(db, [("a", "ann", "award", 1, nil), ("b", "ann", "award", 1, nil)])
    #expect(try eventually(20) { try XPFixture.ledgerCount(db) == 5 })  // ghost, d1, u1, a, b: the second d1 is a replay
    try Self.caughtUp(db)
    let (status, output, error) = try runCommand(db, ["compact"])
    #expect(status == 0, "\(error)")
    #expect(output.split(separator: "\n").sorted() == ["xp.actions: deleted 2 rows", "xp.dups: deleted 1 rows"])
    #expect(try db.sql("SELECT id, payload->>'xp' FROM xp.dups ORDER BY 2").rows == [["d1", "1"], ["d1", "100"]])
    #expect(try Self.rows(db).isEmpty)
    #expect(try XPFixture.totals(db) == ["ann": 4])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// Review: a row that cannot be deleted for a while (a lock held
  /// elsewhere) stops the walk where it is, so that it goes once the lock
  /// is gone; and a source whose deletes would change other tables (a
  /// cascading foreign key) is not retained at all.
  @Test func aLockedRowGoesLaterAndCascadesAreRefused() throws {
    let db = try TestDatabase("retention_locks")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql(
      """
      CREATE TABLE xp.orders (id text PRIMARY KEY, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}');
      CREATE TABLE xp.order_lines (order_id text REFERENCES xp.orders (id) ON DELETE CASCADE, line int);
      SELECT sluice.add_source('xp.orders', actor_column => 'user_id', event_type_column => 'type', retain => '0 s');
      UPDATE sluice.sources SET retain = '0 s' WHERE relation = 'xp.actions';
      """)
    let daemon = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "0"])
    try XPFixture.insert(db, [("a", "ann", "award", 1, nil), ("locked", "ann", "award", 1, nil)])
    try db.sql(
      """
      INSERT INTO xp.orders VALUES ('o1', 'ann', 'award', '{"xp": 1}');
      INSERT INTO xp.order_lines VALUES ('o1', 1);
      """)
    #expect(try eventually(20) { try XPFixture.ledgerCount(db) == 3 })
    try Self.caughtUp(db)
    let holder = try PGConnection(conninfo: db.url)
    defer { holder.close() }
    try holder.simpleQuery("BEGIN; SELECT * FROM xp.actions WHERE id = 'locked' FOR UPDATE")
    let (status, output, error) = try runCommand(db, ["compact"])
    #expect(status == 0, "\(error)")
    #expect(output.split(separator: "\n").sorted() == ["xp.actions: deleted 0 rows", "xp.orders: deleted 0 rows"])
    #expect(error.contains("xp.actions: the walk stopped and tries again next pass"), "\(error)")
    #expect(error.contains("xp.orders: nothing is deleted: a foreign key into it"), "\(error)")
    try holder.simpleQuery("COMMIT")
    #expect(
      try Self.compact(db).split(separator: "\n").sorted() == [
        "xp.actions: deleted 2 rows", "xp.orders: deleted 0 rows",
      ])
    #expect(try Self.rows(db).isEmpty)
    #expect(try db.scalar("SELECT count(*) FROM xp.order_lines") == "1")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// Hostile rows through retention's own paths: ids that look alike
  /// (`josé` composed and decomposed) are two events and each goes by
  /// itself, on a source whose ids are not unique too; a row whose id a
  /// client rewrote after insert is no longer the event's row and stays;
  /// and a pass whose backend is terminated mid-delete leaves nothing
  /// half-done: the next pass deletes exactly the rest.
  @Test func lookAlikeIdsRewrittenRowsAndAKilledPass() throws {
    let db = try TestDatabase("retention_hostile_rows")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql(
      """
      CREATE TABLE xp.loose (id text, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}');
      ALTER TABLE xp.loose REPLICA IDENTITY FULL;
      SELECT sluice.add_source('xp.loose', actor_column => 'user_id', event_type_column => 'type', retain => '0 s');
      UPDATE sluice.sources SET retain = '0 s' WHERE relation = 'xp.actions';
      """)
    let daemon = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "0"])
    let composed = "jos\u{E9}"
    let decomposed = "jose\u{301}"
    try db.sql(
      "INSERT INTO xp.loose VALUES ($1, 'ann', 'award', '{\"xp\": 1}'), ($2, 'ann', 'award', '{\"xp\": 1}')",
      [composed, decomposed])
    try db.sql(
      "INSERT INTO xp.actions (id, user_id, type, payload) VALUES ($1, 'ann', 'award', '{\"xp\": 1}'), ($2, 'ann', 'award', '{\"xp\": 1}')",
      [composed, decomposed])
    try XPFixture.insert(db, [("moved", "ann", "award", 1, nil), ("last", "ann", "award", 1, nil)])
    #expect(try eventually(20) { try XPFixture.ledgerCount(db) == 6 })
    try Self.caughtUp(db)
    // A client rewrites a processed row's id: it is not the event's row any more.
    try db.sql("UPDATE xp.actions SET id = 'elsewhere' WHERE id = 'moved'")

    // The pass's backend is terminated while it waits on a lock in its delete.
    let holder = try PGConnection(conninfo: db.url)
    defer { holder.close() }
    try holder.simpleQuery("BEGIN; SELECT * FROM xp.actions WHERE id = 'last' FOR UPDATE")
    let killed = try sluice(db, ["compact"])
    #expect(
      try eventually(10, "compact to wait on the lock") {
        try db.scalar(
          """
          SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'sluice-compact' AND wait_event_type = 'Lock'
          """) == "1"
      })
    #expect(killed.waitForExit(seconds: 20) != 0)
    try holder.simpleQuery("COMMIT")

    let (status, output, error) = try runCommand(db, ["compact"])
    #expect(status == 0, "\(error)")
    #expect(output.split(separator: "\n").sorted() == ["xp.actions: deleted 3 rows", "xp.loose: deleted 2 rows"])
    #expect(try Self.rows(db) == ["elsewhere"])
    #expect(try db.scalar("SELECT count(*) FROM xp.loose") == "0")
    #expect(try XPFixture.ledgerCount(db) == 6)
    #expect(try XPFixture.totals(db) == ["ann": 6])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func rowsBeyondTheSlotsConfirmedPositionStay() throws {
    let db = try TestDatabase("retention_slot")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql("UPDATE sluice.sources SET retain = '0 seconds'")
    let daemon = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "0"])
    try XPFixture.insert(db, (0..<10).map { ("p\($0)", "ann", "award", 1, nil) })
    #expect(try eventually(20) { try XPFixture.ledgerCount(db) == 10 })
    try Self.caughtUp(db)
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    // A backlog the stopped daemon has not seen, older than retain by the time compact runs.
    try XPFixture.insert(db, (0..<20).map { ("b\($0)", "ann", "award", 1, nil) })
    #expect(try Self.compact(db) == "xp.actions: deleted 10 rows")
    #expect(try Self.rows(db).count == 20)
    let again = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "0"])
    #expect(try eventually(20) { try XPFixture.ledgerCount(db) == 30 })
    #expect(try XPFixture.totals(db) == ["ann": 30])
    try Self.caughtUp(db)
    #expect(try Self.compact(db) == "xp.actions: deleted 20 rows")
    again.signal(SIGTERM)
    #expect(again.waitForExit() == 0)
  }

  @Test func theHolderDeletesEveryIntervalAStandbyNever() throws {
    let db = try TestDatabase("retention_standby")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    let first = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "0"])
    try XPFixture.insert(db, (0..<10).map { ("s\($0)", "ann", "award", 1, nil) })
    #expect(try eventually(20) { try XPFixture.ledgerCount(db) == 10 })
    try Self.caughtUp(db)
    first.signal(SIGTERM)
    #expect(first.waitForExit() == 0)
    try db.sql("UPDATE sluice.sources SET retain = '0 seconds'")
    // Another daemon holds the slot: this connection takes its lock.
    let holder = try TestDatabase(url: db.url)
    try holder.sql("SELECT pg_advisory_lock(hashtext('sluice.slot.' || $1))", [db.slot])
    let metricsPort = try freePort()
    let standby = try sluice(
      db, ["run"], ["SLUICE_RETENTION_INTERVAL_S": "1", "SLUICE_METRICS_ADDR": "127.0.0.1:\(metricsPort)"])
    #expect(try eventually(20, "standing by") { standby.standardError.contains("standing by") })
    // Three intervals as a standby: nothing deleted.
    let watched = Date().addingTimeInterval(3)
    while Date() < watched { usleep(100_000) }
    #expect(try Self.rows(db).count == 10)
    holder.connection.close()
    #expect(try eventually(20, "the new holder deletes") { try Self.rows(db).isEmpty })
    #expect(
      try eventually(10) {
        (try? httpGet(port: metricsPort, path: "/metrics"))?.contains(
          #"sluice_retention_deleted_rows_total{source="xp.actions"} 10"#) == true
      })
    #expect(standby.standardError.contains("retention deleted processed rows"))
    standby.signal(SIGTERM)
    #expect(standby.waitForExit() == 0)
  }

  @Test func insertsKeepTheirLatencyWhileALargeBacklogIsDeleted() throws {
    let db = try TestDatabase("retention_locks")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    let daemon = try startDaemon(db, ["SLUICE_RETENTION_INTERVAL_S": "1"])
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload)
      SELECT 'old' || i, 'ann', 'award', '{"xp": 1}' FROM generate_series(1, 30000) i
      """)
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 30000 })
    try Self.caughtUp(db)
    try db.sql("UPDATE sluice.sources SET retain = '0 seconds'")
    // Steady inserts, one transaction each, while retention works through the backlog.
    var latencies: [Double] = []
    var during = 0
    let deadline = Date().addingTimeInterval(60)
    var index = 0
    while Date() < deadline {
      let left = Int(try db.scalar("SELECT count(*) FROM xp.actions WHERE id LIKE 'old%'") ?? "") ?? 0
      if left == 0 { break }
      if left < 30000 { during += 1 }
      let started = Date()
      try db.sql(
        "INSERT INTO xp.actions (id, user_id, type, payload) VALUES ($1, 'ann', 'award', '{\"xp\": 1}')",
        ["new\(index)"])
      latencies.append(Date().timeIntervalSince(started))
      index += 1
    }
    #expect(try db.scalar("SELECT count(*) FROM xp.actions WHERE id LIKE 'old%'") == "0")
    #expect(during >= 10, "inserts ran while retention deleted: \(during)")
    let worst = latencies.max() ?? 0
    print("inserts during retention: \(during), worst latency \(Int(worst * 1000)) ms")
    #expect(worst < 0.5, "no insert waited for retention's locks")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }
}
