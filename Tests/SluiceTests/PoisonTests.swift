import Foundation
import Sluice
import SluicePostgres
import Testing

/// SPEC section 8: no row can stop, stall or fool the daemon. Each test is a
/// row (or a handler) an attacker or a bug could produce, and what must
/// happen: a ledger row with a reason, the events around it applied once,
/// the daemon still running.
@Suite(.serialized) struct PoisonTests {
  static let big = String(repeating: "k", count: 20_000)

  @Test func oversizedValuesAreRejectedAndTheStreamGoesOn() throws {
    let db = try TestDatabase("oversized")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann", Self.big])
    try createSlot(db)
    let longID = "i" + Self.big
    try XPFixture.insert(
      db,
      [
        ("big-key", "ann", "award", 5, Self.big), ("big-key-2", "ann", "award", 5, Self.big),
        ("big-actor", Self.big, "award", 5, nil), ("big-type", "ann", Self.big, 5, nil),
        (longID, "ann", "award", 5, nil),
        ("after", "ann", "award", 7, Self.big.prefix(1024).description),
      ])
    let daemon = try startDaemon(db)
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 6 })
    #expect(daemon.isRunning, "\(daemon.standardError)")
    let rows = try db.sql(
      "SELECT event_id, status, reason, event_type, actor, dedupe_key FROM sluice.event_log ORDER BY event_id"
    ).rows
    func row(_ id: String) -> [String?]? { rows.first { $0[0] == id } }
    #expect(
      row("big-key")?[1...] == ["rejected", "dedupe_key is 20000 bytes long; the limit is 1024", "award", "ann", nil])
    #expect(row("big-key-2")?[1...2] == ["rejected", "dedupe_key is 20000 bytes long; the limit is 1024"])
    #expect(row("big-actor")?[1...] == ["rejected", "actor is 20000 bytes long; the limit is 1024", "award", nil, nil])
    #expect(row("big-type")?[1...] == ["rejected", "type is 20000 bytes long; the limit is 1024", nil, "ann", nil])
    let digest = try db.scalar("SELECT 'sha256:' || encode(sha256(convert_to($1, 'UTF8')), 'hex')", [longID])
    #expect(row(digest ?? "?")?[1...2] == ["rejected", "id is 20001 bytes long; the limit is 1024"])
    #expect(row("after")?[1] == "applied")
    #expect(try XPFixture.totals(db) == ["ann": 7])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(!daemon.standardError.contains("reconnecting"), "\(daemon.standardError)")
  }

  @Test func rowsMissingAMappedColumnAreRejectedOwnNoKeyAndDoNotLoop() throws {
    let db = try TestDatabase("missingcol")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql("UPDATE sluice.sources SET scope_column = 'region' WHERE relation = 'xp.actions'")
    try createSlot(db)
    try XPFixture.insert(db, [("m1", "ann", "award", 1, "same"), ("m2", "ann", "award", 1, "same")])
    try db.sql("UPDATE sluice.sources SET scope_column = NULL WHERE relation = 'xp.actions'")
    try XPFixture.insert(db, [("ok", "ann", "award", 3, "same")])
    let daemon = try startDaemon(db)
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 3 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let reason = "source xp.actions has no column \"region\""
    #expect(
      try db.sql("SELECT event_id, status, reason, dedupe_key FROM sluice.event_log ORDER BY event_id").rows == [
        ["m1", "rejected", reason, nil], ["m2", "rejected", reason, nil], ["ok", "applied", nil, "same"],
      ])
    #expect(try XPFixture.totals(db) == ["ann": 3], "the rejected rows owned no key, so 'ok' was not a duplicate")
    #expect(!daemon.standardError.contains("reconnecting"), "\(daemon.standardError)")
  }

  @Test func aHandlerThatTerminatesItsBackendGoesDeadAloneAndTheRestApplyOnce() throws {
    let db = try TestDatabase("terminated")
    try XPFixture.install(db)
    try XPFixture.handler(
      db, "fragile",
      """
      BEGIN
        IF e->'row'->'payload' ? 'die' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
        INSERT INTO xp.totals VALUES (e->>'actor', 1) ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + 1;
      END
      """)
    try createSlot(db)
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload)
      SELECT 'f' || lpad(g::text, 4, '0'), 'u', 'fragile', CASE WHEN g = 500 THEN '{"die": true}' ELSE '{}' END::jsonb
      FROM generate_series(1, 1000) g
      """)
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "3"])
    #expect(try eventually(90, "1,000 ledger rows") { try XPFixture.ledgerCount(db) == 1000 })
    #expect(daemon.isRunning)
    #expect(
      try db.sql("SELECT status, attempts, reason FROM sluice.event_log WHERE event_id = 'f0500'").rows == [
        ["dead", "3", "the daemon or its database session died while handling this event"]
      ])
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'applied'") == "999")
    #expect(try XPFixture.totals(db) == ["u": 999])
    #expect(try db.scalar("SELECT count(*) FROM sluice.attempts") == "0")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// A batch whose handler fails commits the events before it, then
  /// retries it alone. That first commit must not record the batch as
  /// complete: a daemon killed during the retries would otherwise skip the
  /// failing event and every one after it on restart, as applied whole
  /// (the system soak lost events this way).
  @Test func aDaemonKilledWhileRetryingLosesNothingOfItsBatch() throws {
    let db = try TestDatabase("retrykill")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    // xp.flaky fails while its switch is on (it is, from the start), then adds 1000.
    try createSlot(db)
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "1000"])
    // One transaction: an award, the flaky event, two awards.
    try XPFixture.insert(
      db,
      [
        ("a1", "ann", "award", 1, nil), ("f", "ann", "flaky", 0, nil), ("a2", "ann", "award", 2, nil),
        ("a3", "ann", "award", 4, nil),
      ])
    #expect(
      try eventually(30, "the flaky event to be retried alone") {
        try XPFixture.ledgerCount(db) == 1 && db.scalar("SELECT count(*) FROM sluice.attempts") == "1"
      })
    daemon.signal(SIGKILL)
    _ = daemon.waitForExit()
    try db.sql("UPDATE xp.switches SET failing = false WHERE name = 'flaky'")
    let again = try startDaemon(db)
    #expect(try eventually(30, "every event of the batch in the ledger") { try XPFixture.ledgerCount(db) == 4 })
    #expect(try XPFixture.statuses(db) == ["a1": "applied", "f": "applied", "a2": "applied", "a3": "applied"])
    #expect(try XPFixture.totals(db) == ["ann": 1007])
    again.signal(SIGTERM)
    #expect(again.waitForExit() == 0)
  }

  @Test func aHangingHandlerTimesOutGoesDeadAndTheStreamGoesOn() throws {
    let db = try TestDatabase("hang")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try XPFixture.handler(db, "hang", language: "sql", "SELECT pg_sleep(3600)")
    try createSlot(db)
    try XPFixture.insert(db, [("h", "ann", "hang", 1, nil), ("a", "ann", "award", 2, nil)])
    let started = Date()
    let daemon = try startDaemon(db, ["SLUICE_HANDLER_TIMEOUT_MS": "1000", "SLUICE_MAX_ATTEMPTS": "2"])
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 2 })
    #expect(Date().timeIntervalSince(started) < 20)
    #expect(
      try db.sql("SELECT status, attempts, reason FROM sluice.event_log WHERE event_id = 'h'").rows == [
        ["dead", "2", "handler timed out after 1000 ms (SLUICE_HANDLER_TIMEOUT_MS)"]
      ])
    #expect(try XPFixture.totals(db) == ["ann": 2])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func anEventThatKillsTheDaemonIsDeadAfterMaxAttemptsRestarts() throws {
    let db = try TestDatabase("killer")
    try XPFixture.install(db)
    try db.sql("INSERT INTO sluice.permission_rules (event_type, role) VALUES ('crash', 'anyone')")
    try createSlot(db, binary: "sluice-fixtures")
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES
        ('c1', 'u', 'crash', '{}'), ('c2', 'u', 'crash', '{"abort": true}'), ('c3', 'u', 'crash', '{}'),
        ('c4', 'v', 'crash', '{"exit": 3}')
      """)
    var deaths = 0
    for _ in 0..<12 {
      let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "3"], binary: "sluice-fixtures")
      var exited = false
      _ = try eventually(30, "a death or every event in the ledger") {
        exited = !daemon.isRunning
        return try exited || XPFixture.ledgerCount(db) == 4
      }
      if exited {
        deaths += 1
        continue
      }
      daemon.signal(SIGTERM)
      #expect(daemon.waitForExit() == 0)
      break
    }
    #expect(deaths == 6, "3 attempts each for c2 and c4")
    #expect(
      try db.sql("SELECT event_id, status, attempts, reason FROM sluice.event_log ORDER BY event_id").rows == [
        ["c1", "applied", "1", nil],
        ["c2", "dead", "3", "the daemon or its database session died while handling this event"],
        ["c3", "applied", "1", nil],
        ["c4", "dead", "3", "the daemon or its database session died while handling this event"],
      ])
    #expect(try XPFixture.totals(db) == ["u": 2])
  }

  @Test func theWatchdogIsFedWhileFailingEventsAreRetried() throws {
    let db = try TestDatabase("watchdog")
    try XPFixture.install(db)
    try createSlot(db)
    try XPFixture.insert(db, (0..<40).map { ("w\($0)", "u", "flaky", 1, nil) })
    let path = NSTemporaryDirectory() + "sluice-watchdog-\(getpid()).sock"
    let socket = try DatagramSocket(path: path)
    defer { socket.close() }
    let daemon = try startDaemon(db, ["NOTIFY_SOCKET": path, "WATCHDOG_USEC": "5000000", "SLUICE_MAX_ATTEMPTS": "4"])
    var beats: [Date] = []
    let started = Date()
    #expect(
      try eventually(120, "40 dead events") {
        for message in socket.receiveAll() where message.contains("WATCHDOG=1") { beats.append(Date()) }
        return try XPFixture.ledgerCount(db) == 40
      })
    let finished = Date()
    let gaps = zip([started] + beats, beats + [finished]).map { $1.timeIntervalSince($0) }
    print(
      "watchdog: \(beats.count) beats over \(String(format: "%.1f", finished.timeIntervalSince(started))) s, longest gap \(String(format: "%.2f", gaps.max() ?? 0)) s"
    )
    #expect(finished.timeIntervalSince(started) > 5, "the retries outlast WatchdogSec, so the test means something")
    #expect((gaps.max() ?? 99) <= 2.5)
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'dead' AND attempts = 4") == "40")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func preparedStatementsStayBoundedWhateverClientsSend() throws {
    let db = try TestDatabase("prepared")
    try XPFixture.install(db)
    try db.sql(
      """
      CREATE TABLE xp.probe (n int);
      CREATE FUNCTION xp.refuse(e jsonb) RETURNS void LANGUAGE sql AS $$ SELECT sluice.reject('refused') $$;
      CREATE FUNCTION xp.probe(e jsonb) RETURNS void LANGUAGE sql AS $$
        INSERT INTO xp.probe SELECT count(*) FROM pg_prepared_statements $$;
      INSERT INTO sluice.handlers VALUES ('refuse', 'xp.refuse'), ('probe', 'xp.probe');
      INSERT INTO sluice.permission_rules (event_type, role) VALUES ('refuse', 'anyone'), ('probe', 'anyone');
      """)
    try createSlot(db)
    let daemon = try startDaemon(db, ["SLUICE_BATCH_SIZE": "100"])
    for chunk in 0..<100 {
      try db.sql(
        """
        INSERT INTO xp.actions (id, user_id, type)
        SELECT 'r' || (\(chunk * 100) + g), 'u', 'refuse' FROM generate_series(1, 100) g
        """)
    }
    try XPFixture.insert(db, [("probe", "u", "probe", 1, nil)])
    #expect(try eventually(120, "10,001 ledger rows") { try XPFixture.ledgerCount(db) == 10_001 })
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'rejected'") == "10000")
    let prepared = Int(try db.scalar("SELECT n FROM xp.probe") ?? "") ?? -1
    print("prepared statements on the apply connection after 10,000 rejections: \(prepared)")
    #expect((0...70).contains(prepared))
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func clientChosenTypesDoNotGrowMetrics() throws {
    let db = try TestDatabase("cardinality")
    try XPFixture.install(db)
    try createSlot(db)
    let port = try freePort()
    let daemon = try startDaemon(db, ["SLUICE_METRICS_ADDR": "127.0.0.1:\(port)"])
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type)
      SELECT 'd' || g, 'mallory', md5('seed-7:' || g) FROM generate_series(1, 100000) g
      """)
    #expect(try eventually(180, "100,000 ledger rows") { try XPFixture.ledgerCount(db) == 100_000 })
    var body = ""
    #expect(
      try eventually {
        body = try httpGet(port: port, path: "/metrics")
        return body.contains("sluice_events_total{type=\"other\",status=\"denied\"} 100000")
      })
    print("/metrics after 100,000 denied random types: \(body.utf8.count) bytes")
    #expect(body.utf8.count < 16_384)
    #expect(body.contains("sluice_events_total{type=\"other\",status=\"denied\"} 100000"))
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func aSilentMetricsClientDoesNotDelayHealthz() throws {
    let db = try TestDatabase("slowclient")
    try XPFixture.install(db)
    let port = try freePort()
    let daemon = try startDaemon(db, ["SLUICE_METRICS_ADDR": "127.0.0.1:\(port)"])
    // Connects, and then neither sends a request nor reads.
    let silent = try connectLoopback(port: port)
    defer { close(silent) }
    usleep(100_000)  // the server has accepted the silent client before the probe arrives
    let started = Date()
    let answer = try httpGet(port: port, path: "/healthz")
    let seconds = Date().timeIntervalSince(started)
    #expect(answer.hasPrefix("HTTP/1.0 200"))
    #expect(seconds < 0.5, "/healthz took \(seconds) s behind a silent client")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func largeRowsKeepMemoryBounded() throws {
    let db = try TestDatabase("largerows")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try createSlot(db)
    for chunk in 0..<10 {
      try db.sql(
        """
        INSERT INTO xp.actions (id, user_id, type, payload)
        SELECT 'big' || (\(chunk * 10) + g), 'ann', 'award',
               jsonb_build_object('xp', 1, 'junk', repeat(md5(g::text), 131072))
        FROM generate_series(1, 10) g
        """)
    }
    let daemon = try startDaemon(db)
    #expect(try eventually(180, "100 ledger rows") { try XPFixture.ledgerCount(db) == 100 })
    let peak = daemon.peakRSS ?? .max
    print("peak RSS draining 100 rows of 4 MB: \(peak / 1_048_576) MiB")
    #expect(peak <= 96 << 20)
    #expect(try XPFixture.totals(db) == ["ann": 100])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func canonicallyEquivalentIdentitiesAreDistinct() throws {
    let db = try TestDatabase("bytewise")
    try XPFixture.install(db)
    let decomposed = "jose\u{0301}"
    let precomposed = "jos\u{00E9}"
    try XPFixture.grant(db, [decomposed])
    try createSlot(db)
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload, dedupe_key) VALUES
        ('p1', $1, 'award', '{"xp": 100}', 'k'),
        ('d1', $2, 'award', '{"xp": 1}', 'k'),
        ($3, $2, 'award', '{"xp": 10}', 'k2'),
        ($4, $2, 'award', '{"xp": 20}', 'k3')
      """, [precomposed, decomposed, "e\u{0301}", "\u{00E9}"])
    let daemon = try startDaemon(db)
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 4 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try db.scalar("SELECT status FROM sluice.event_log WHERE event_id = 'p1'") == "denied")
    #expect(try db.scalar("SELECT status FROM sluice.event_log WHERE event_id = 'd1'") == "applied")
    #expect(
      try db.scalar(
        "SELECT count(*) FROM sluice.event_log WHERE event_id IN ($1, $2) AND status = 'applied'",
        [
          "e\u{0301}", "\u{00E9}",
        ]) == "2")
    #expect(try db.sql("SELECT user_id, xp FROM xp.totals").rows == [[decomposed, "31"]])
  }

  @Test func rejectionsStayOnTheFastPathOnceLearnedAndUndoTheirWrites() throws {
    let db = try TestDatabase("guards")
    try XPFixture.install(db)
    try XPFixture.handler(
      db, "picky",
      """
      BEGIN
        INSERT INTO xp.totals VALUES (e->>'actor', 1) ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + 1;
        IF (e->'row'->'payload'->>'xp')::int = 0 THEN PERFORM sluice.reject('zero'); END IF;
      END
      """)
    try createSlot(db)
    for chunk in 0..<10 {
      try db.sql(
        """
        INSERT INTO xp.actions (id, user_id, type, payload)
        SELECT 'p' || (\(chunk * 1000) + g), 'u', 'picky', jsonb_build_object('xp', g % 100)
        FROM generate_series(1, 1000) g
        """)
    }
    let daemon = try startDaemon(db, ["SLUICE_LOG_LEVEL": "debug"])
    #expect(try eventually(60, "10,000 ledger rows") { try XPFixture.ledgerCount(db) == 10_000 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(
      try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'rejected' AND reason = 'zero'") == "100")
    #expect(try XPFixture.totals(db) == ["u": 9_900], "a rejected event's own write is undone")
    let redone = daemon.standardError.components(separatedBy: "batch part redone").count - 1
    print("batch parts redone carefully: \(redone) (of 10 batches with rejections)")
    #expect(redone <= 2, "after the first rejection, the handler's calls are guarded on the fast path")
  }

  /// Found by review: ids that would share a ledger id (a digest, or the
  /// daemon's own id for a NULL id) made the primary key fail and `run` exit.
  @Test func idsThatLookLikeLedgerIdsStayDistinct() throws {
    let db = try TestDatabase("ledgerids")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql("ALTER TABLE xp.actions DROP CONSTRAINT actions_pkey, ALTER COLUMN id DROP NOT NULL")
    try createSlot(db)
    let long = String(repeating: "a", count: 1025)
    let digest = try db.scalar("SELECT 'sha256:' || encode(sha256(convert_to($1, 'UTF8')), 'hex')", [long]) ?? "?"
    let nullRowPosition = try db.scalar("SELECT pg_current_wal_insert_lsn()::text") ?? "?"
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES
        ($1, 'ann', 'award', '{"xp": 1}'), ($2, 'ann', 'award', '{"xp": 2}'),
        ($3, 'ann', 'award', '{"xp": 4}'), (NULL, 'ann', 'award', '{"xp": 8}'), ('plain', 'ann', 'award', '{"xp": 16}')
      """, [long, digest, "sluice:null-id@\(nullRowPosition)"])
    let daemon = try startDaemon(db)
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 5 })
    #expect(daemon.isRunning, "\(daemon.standardError)")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try db.scalar("SELECT count(DISTINCT event_id) FROM sluice.event_log") == "5")
    #expect(try XPFixture.totals(db) == ["ann": 2 + 4 + 16], "the long id and the NULL id are rejected")
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE event_id LIKE 'sluice:null-id@%'") == "1")
  }

  /// Found by review: after an unclean stop, innocent events must not be
  /// charged an attempt they never made (with SLUICE_MAX_ATTEMPTS=1 they
  /// went dead unrun).
  @Test func anUncleanStopChargesNoInnocentEvent() throws {
    let db = try TestDatabase("innocent")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try createSlot(db)
    let environment = ["SLUICE_MAX_ATTEMPTS": "1"]
    var daemon = try startDaemon(db, environment)
    try XPFixture.insert(db, (0..<5).map { ("a\($0)", "ann", "award", 1, nil) })
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 5 })
    daemon.signal(SIGKILL)
    _ = daemon.waitForExit()
    daemon = try startDaemon(db, environment)
    try XPFixture.insert(db, (5..<10).map { ("a\($0)", "ann", "award", 1, nil) })
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 10 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'applied' AND attempts = 1") == "10")
    #expect(try XPFixture.totals(db) == ["ann": 10])
  }

  /// Found by review: a handler finishing just at its deadline could leave
  /// a cancel request that landed on the daemon's next statement. Whatever
  /// the timing, the daemon keeps running and no other event is touched.
  @Test func handlersRightAtTheirDeadlineDisturbNothingElse() throws {
    let db = try TestDatabase("latecancel")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try XPFixture.handler(db, "slow", language: "sql", "SELECT pg_sleep(0.19)")
    try createSlot(db)
    for round in 0..<8 {
      try XPFixture.insert(
        db, [("s\(round)", "u", "slow", 1, nil)] + (0..<25).map { ("n\(round)-\($0)", "ann", "award", 1, nil) })
    }
    let daemon = try startDaemon(db, ["SLUICE_HANDLER_TIMEOUT_MS": "200", "SLUICE_MAX_ATTEMPTS": "2"])
    #expect(try eventually(120, "208 ledger rows") { try XPFixture.ledgerCount(db) == 208 })
    #expect(daemon.isRunning, "\(daemon.standardError)")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(
      try db.scalar("SELECT count(*) FROM sluice.event_log WHERE event_id LIKE 'n%' AND status = 'applied'") == "200")
    #expect(try XPFixture.totals(db)["ann"] == 200)
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'dead' AND event IS NULL") == "0")
  }

  /// Found by review: one huge row, written down when it goes dead, could
  /// exhaust memory on every restart. Rows over 16 MiB are rejected.
  @Test func aHugeRowIsRejected() throws {
    let db = try TestDatabase("hugerow")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try createSlot(db)
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload)
      VALUES ('huge', 'ann', 'award', jsonb_build_object('xp', 1, 'junk', repeat('x', 17 * 1024 * 1024))),
             ('small', 'ann', 'award', '{"xp": 2}')
      """)
    let daemon = try startDaemon(db)
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 2 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let reason = try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'huge'") ?? ""
    #expect(reason.hasPrefix("row is ") && reason.hasSuffix("bytes; the limit is 16777216"), "\(reason)")
    #expect(try XPFixture.totals(db) == ["ann": 2])
  }

  /// Found by review: a handler that relays a remote connection error
  /// (SQLSTATE 08xxx, as dblink or postgres_fdw would) has failed; its own
  /// connection is fine, so it goes dead instead of reconnecting in a loop.
  @Test func aHandlerRelayingAConnectionErrorGoesDeadWithoutReconnecting() throws {
    let db = try TestDatabase("relayed")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try XPFixture.handler(
      db, "remote",
      "BEGIN RAISE EXCEPTION 'could not reach the other server' USING ERRCODE = '08006'; END")
    try createSlot(db)
    try XPFixture.insert(db, [("r", "u", "remote", 1, nil), ("a", "ann", "award", 3, nil)])
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "2"])
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 2 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try XPFixture.statuses(db) == ["r": "dead", "a": "applied"])
    #expect(try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'r'")?.contains("08006") == true)
    #expect(!daemon.standardError.contains("reconnecting"), "\(daemon.standardError)")
    #expect(try XPFixture.totals(db) == ["ann": 3])
  }
}
