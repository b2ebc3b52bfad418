import Foundation
import Sluice
import SluiceHTTP
import SluicePostgres
import Testing

/// SPEC section 9: deliveries sent if and only if their event applied,
/// signed as Standard Webhooks says, retried, ordered per actor, never
/// holding back the stream. Each test runs its own receiver on 127.0.0.1.
@Suite struct WebhookTests {
  /// The XP fixture, an endpoint per (name, path) on the receiver, and
  /// `add_webhook` types anyone may emit.
  static func setUp(
    _ label: String, _ receiver: WebhookReceiver, endpoints: [(name: String, path: String)],
    webhooks: [(type: String, endpoint: String)] = [], secret: String? = nil, timeoutMilliseconds: Int = 10_000,
    maxInFlight: Int = 4
  ) throws -> TestDatabase {
    let db = try TestDatabase(label)
    try XPFixture.install(db)
    for endpoint in endpoints {
      try db.sql(
        "INSERT INTO sluice.endpoints (name, url, secret, timeout_ms, max_in_flight) VALUES ($1, $2, $3, $4, $5)",
        [endpoint.name, receiver.url(endpoint.path), secret, "\(timeoutMilliseconds)", "\(maxInFlight)"])
    }
    for webhook in webhooks {
      try db.sql("SELECT sluice.add_webhook($1, $2)", [webhook.type, webhook.endpoint])
      try db.sql("INSERT INTO sluice.permission_rules (event_type, role) VALUES ($1, 'anyone')", [webhook.type])
    }
    return db
  }

  static func outbox(_ db: TestDatabase) throws -> [[String?]] {
    try db.sql(
      "SELECT idempotency_key, status, attempts::text, last_status::text, last_error FROM sluice.outbox ORDER BY id"
    ).rows
  }

  @Test func deliveredWithTheDocumentedHeadersAndAVerifiedSignature() throws {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    let receiver = try WebhookReceiver(secret: secret)
    let db = try Self.setUp(
      "webhook_delivered", receiver, endpoints: [("edge", "/ok")], webhooks: [("ping", "edge")], secret: secret)
    // A SQL handler that emits twice: n counts the event's emits from 1.
    try XPFixture.handler(
      db, "twice",
      """
      BEGIN
        PERFORM sluice.emit('edge', jsonb_build_object('user', e->>'actor', 'n', 1));
        PERFORM sluice.emit('edge', jsonb_build_object('user', e->>'actor', 'n', 2));
      END
      """)
    try db.sql("INSERT INTO sluice.permission_rules (event_type, role) VALUES ('swift_emit', 'anyone')")
    let metricsPort = try freePort()
    let daemon = try startDaemon(db, ["SLUICE_METRICS_ADDR": "127.0.0.1:\(metricsPort)"], binary: "sluice-fixtures")
    try XPFixture.insert(db, [("a1", "ann", "twice", 1, nil), ("p1", "bob", "ping", 1, nil)])
    try db.sql(#"INSERT INTO xp.actions (id, user_id, type) VALUES ('s1', 'cat', 'swift_emit')"#)
    #expect(try eventually(20, "4 deliveries") { receiver.requests.count >= 4 })
    #expect(
      try eventually(10, "delivered marked") {
        let rows = try Self.outbox(db)
        return rows.count == 4 && rows.allSatisfy { $0[1] == "delivered" }
      })
    let requests = receiver.requests
    #expect(requests.count == 4)
    #expect(Set(requests.map(\.id)) == ["xp.actions/a1/1", "xp.actions/a1/2", "xp.actions/p1/1", "xp.actions/s1/1"])
    for request in requests {
      #expect(request.verified as? Bool == true, "\(request.raw)")
      #expect(request.headers["idempotency-key"] == request.id)
      #expect(request.headers["content-type"] == "application/json")
      #expect(request.headers["sluice-endpoint"] == "edge")
      #expect(request.headers["webhook-signature"]?.hasPrefix("v1,") == true)
      #expect(abs((Double(request.headers["webhook-timestamp"] ?? "") ?? 0) - request.arrived) < 30)
    }
    // Metrics count deliveries by endpoint name and result, and time them; no URL.
    let metrics = try httpGet(port: metricsPort, path: "/metrics")
    #expect(metrics.contains(#"sluice_outbox_deliveries_total{endpoint="edge",result="delivered"} 4"#), "\(metrics)")
    #expect(metrics.contains(#"sluice_outbox_delivery_seconds_count{endpoint="edge"} 4"#))
    #expect(!metrics.contains("127.0.0.1:\(receiver.port)"))
    let ping = try #require(requests.first { $0.id == "xp.actions/p1/1" })
    #expect(ping.headers["sluice-event-type"] == "ping")
    #expect(ping.headers["sluice-event-id"] == "p1")
    // add_webhook sends the event as SQL handlers receive it.
    #expect(ping.bodyObject["actor"] as? String == "bob")
    #expect((ping.bodyObject["row"] as? [String: Any])?["id"] as? String == "p1")
    #expect(requests.first { $0.id == "xp.actions/a1/2" }?.bodyObject["n"] as? Int == 2)
    #expect(requests.first { $0.id == "xp.actions/s1/1" }?.bodyObject["from"] as? String == "swift")
    #expect(try Self.outbox(db).allSatisfy { $0[2] == "1" && $0[3] == "200" })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    // The URL and the secret appear in no log line and no status.
    let (_, status, _) = try runCommand(db, ["status", "--json"])
    for text in [daemon.standardError, status] {
      #expect(!text.contains("127.0.0.1:\(receiver.port)"))
      #expect(!text.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
    }
    #expect(status.contains(#""outbox":{"pending":0,"dead":0"#), "\(status)")
  }

  @Test func retriedUnderTheSameIdAndDeadAsTheSpecSays() throws {
    let receiver = try WebhookReceiver()
    let endpoints = [
      ("flaky", "/fail/2/503"), ("slow", "/hang-first/3000"), ("limited", "/retry-after/1"), ("bad", "/status/400"),
      ("down", "/status/500"),
    ]
    let db = try Self.setUp(
      "webhook_retries", receiver, endpoints: endpoints, webhooks: endpoints.map { ("to_\($0.0)", $0.0) },
      timeoutMilliseconds: 500)
    let daemon = try startDaemon(db, ["SLUICE_OUTBOX_BACKOFF_MS": "20", "SLUICE_OUTBOX_MAX_ATTEMPTS": "3"])
    try XPFixture.insert(db, endpoints.map { ("e_\($0.0)", "ann_\($0.0)", "to_\($0.0)", 1, nil) })
    func row(_ name: String) throws -> [String?] {
      try db.sql(
        "SELECT status, attempts::text, last_status::text, last_error FROM sluice.outbox WHERE endpoint = $1", [name]
      ).rows.first ?? []
    }
    #expect(
      try eventually(30, "every delivery final: \((try? Self.outbox(db)) ?? [])") {
        let rows = try Self.outbox(db)
        return rows.count == endpoints.count && rows.allSatisfy { $0[1] != "pending" }
      })
    #expect(try row("flaky") == ["delivered", "3", "200", nil])
    #expect(try row("slow").prefix(3) == ["delivered", "2", "200"])
    #expect(try row("limited").prefix(3) == ["delivered", "2", "200"])
    #expect(try row("bad") == ["dead", "1", "400", "HTTP 400: refused by the test receiver"])
    #expect(try row("down") == ["dead", "3", "500", "HTTP 500: refused by the test receiver"])
    let requests = receiver.requests
    for (name, path) in endpoints {
      let ids = Set(requests.filter { $0.path == path }.map(\.id))
      #expect(ids == ["xp.actions/e_\(name)/1"], "one key on every attempt to \(name)")
    }
    // The timed-out first attempt left no error in the final row, but it was retried:
    #expect(requests.filter { $0.path == "/hang-first/3000" }.count == 2)
    // Retry-After: 1 was honoured, though the backoff alone would wait at most 20 ms.
    let limited = requests.filter { $0.path == "/retry-after/1" }.map(\.arrived)
    #expect(limited.count == 2)
    if limited.count == 2 { #expect(limited[1] - limited[0] >= 0.9, "\(limited)") }

    // outbox list shows the dead ones, without URLs; retry and discard work.
    let (_, list, _) = try runCommand(db, ["outbox", "list", "--json"])
    let listed = jsonObjects(list.split(separator: "\n").map(String.init))
    #expect(listed.compactMap { $0["endpoint"] as? String }.sorted() == ["bad", "down"])
    #expect(!list.contains("127.0.0.1"))
    let badID = try #require(try db.scalar("SELECT id FROM sluice.outbox WHERE endpoint = 'bad'"))
    let downID = try #require(try db.scalar("SELECT id FROM sluice.outbox WHERE endpoint = 'down'"))
    try db.sql("UPDATE sluice.endpoints SET url = $1 WHERE name = 'bad'", [receiver.url("/ok")])
    #expect(try runCommand(db, ["outbox", "retry", badID]).0 == 0)
    #expect(
      try eventually(20, "the retried delivery: \((try? row("bad")) ?? []) \(daemon.standardError)") {
        try row("bad").first == "delivered"
      })
    #expect(try row("bad").prefix(3) == ["delivered", "1", "200"])
    #expect(try runCommand(db, ["outbox", "discard", downID]).0 == 0)
    #expect(try row("down").isEmpty)
    #expect(try runCommand(db, ["outbox", "discard", downID]).0 == 1)
    #expect(try runCommand(db, ["outbox", "list"]).1.contains("no pending or dead deliveries"))
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func rejectedDeniedAndFailedEventsSendNothing() throws {
    let receiver = try WebhookReceiver()
    let db = try Self.setUp("webhook_nothing", receiver, endpoints: [("edge", "/ok")], webhooks: [("ping", "edge")])
    try XPFixture.handler(
      db, "emit_then_reject",
      "BEGIN PERFORM sluice.emit('edge', '{\"x\": 1}'); PERFORM sluice.reject('no'); END")
    try XPFixture.handler(
      db, "emit_then_fail", "BEGIN PERFORM sluice.emit('edge', '{\"x\": 2}'); RAISE EXCEPTION 'bug'; END")
    try XPFixture.handler(db, "unknown_endpoint", "BEGIN PERFORM sluice.emit('nowhere', '{}'); END")
    try db.sql("INSERT INTO sluice.permission_rules (event_type, role) VALUES ('swift_emit', 'anyone')")
    try db.sql("DELETE FROM sluice.permission_rules WHERE event_type = 'ping'")
    try db.sql("INSERT INTO sluice.permission_rules (event_type, role) VALUES ('ping', 'admin')")
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "1"], binary: "sluice-fixtures")
    try XPFixture.insert(
      db,
      [
        ("r", "ann", "emit_then_reject", 1, nil), ("f", "bob", "emit_then_fail", 1, nil),
        ("u", "cat", "unknown_endpoint", 1, nil), ("d", "dan", "ping", 1, nil),
      ])
    try db.sql(
      #"INSERT INTO xp.actions (id, user_id, type, payload) VALUES ('s', 'eve', 'swift_emit', '{"reject": true}')"#)
    #expect(
      try eventually(20, "the ledger") {
        try XPFixture.statuses(db) == [
          "r": "rejected", "f": "dead", "u": "dead", "d": "denied", "s": "rejected",
        ]
      })
    #expect(
      try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'u'")?.contains(
        "sluice.emit: unknown endpoint 'nowhere'") == true)
    try db.sql("INSERT INTO sluice.permission_rules (event_type, role) VALUES ('ping', 'anyone')")
    try XPFixture.insert(db, [("last", "gus", "ping", 1, nil)])
    #expect(try eventually(20, "the last event's delivery") { receiver.requests.count >= 1 })
    #expect(try eventually(10) { try Self.outbox(db).first?[1] == "delivered" })
    #expect(receiver.requests.map(\.id) == ["xp.actions/last/1"])
    #expect(try Self.outbox(db).map { $0[0] } == ["xp.actions/last/1"])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func perActorCommitOrderHoldsWithManyInFlight() throws {
    let seed = testSeed(default: 7)
    let receiver = try WebhookReceiver()
    let db = try Self.setUp(
      "webhook_order", receiver, endpoints: [("edge", "/jitter/30/\(seed)")], webhooks: [("ping", "edge")],
      maxInFlight: 8)
    let daemon = try startDaemon(db)
    let actors = (0..<10).map { "actor\($0)" }
    for round in 0..<6 {
      // Each transaction holds 5 events of every actor, interleaved.
      try XPFixture.insert(
        db, (0..<5).flatMap { step in actors.map { ("\($0)-\(round * 5 + step)", $0, "ping", 1, nil) } })
    }
    #expect(try eventually(60, "300 deliveries") { receiver.requests.count >= 300 })
    let requests = receiver.requests
    #expect(requests.count == 300)
    for actor in actors {
      let sequence = requests.filter { $0.id.hasPrefix("xp.actions/\(actor)-") }.map {
        Int($0.id.split(separator: "/")[1].split(separator: "-")[1]) ?? -1
      }
      #expect(sequence == Array(0..<30), "\(actor) in commit order")
    }
    // More than one delivery was in flight at a time (and never more than 8).
    let spans = requests.map { (start: $0.arrived, end: $0.arrived + Double($0.raw["delay"] as? Double ?? 0)) }
    let overlap = spans.map { span in spans.filter { $0.start <= span.start && span.start < $0.end }.count }.max() ?? 0
    #expect(overlap > 1 && overlap <= 8, "at most \(overlap) at once")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func killedWhileDeliveringEveryDeliveryArrivesUnderItsOneKey() throws {
    let receiver = try WebhookReceiver()
    let db = try Self.setUp(
      "webhook_crash", receiver, endpoints: [("edge", "/jitter/40/3")], webhooks: [("ping", "edge")], maxInFlight: 4)
    let first = try startDaemon(db)
    try XPFixture.insert(db, (0..<200).map { ("k\($0)", "actor\($0 % 20)", "ping", 1, nil) })
    #expect(try eventually(30, "some deliveries") { receiver.requests.count >= 30 })
    first.signal(SIGKILL)
    _ = first.waitForExit()
    let second = try startDaemon(db)
    #expect(
      try eventually(60, "every delivery marked delivered") {
        try db.scalar("SELECT count(*) FROM sluice.outbox WHERE status = 'delivered'") == "200"
      })
    let requests = receiver.requests
    let keys = Set(requests.map(\.id))
    #expect(keys == Set((0..<200).map { "xp.actions/k\($0)/1" }))
    // A repeat carries the same body under the same key.
    var bodies: [String: String] = [:]
    for request in requests {
      if let earlier = bodies[request.id] {
        #expect(earlier == request.body)
      } else {
        bodies[request.id] = request.body
      }
    }
    print("deliveries: \(requests.count) for 200 keys (\(requests.count - 200) repeated after the kill)")
    #expect(try db.scalar("SELECT count(*) FROM sluice.outbox") == "200")
    second.signal(SIGTERM)
    #expect(second.waitForExit() == 0)
  }

  @Test func aStandbySendsNothingAndTheNewHolderDeliversWhatIsPending() throws {
    let receiver = try WebhookReceiver()
    let db = try Self.setUp("webhook_standby", receiver, endpoints: [("edge", "/ok")])
    try createSlot(db)
    // Deliveries already queued, as a holder that died would leave them.
    try db.sql(
      """
      INSERT INTO sluice.outbox (endpoint, source, event_id, event_type, actor, idempotency_key, body)
      SELECT 'edge', 'xp.actions', 'q' || i, 'ping', 'ann', 'xp.actions/q' || i || '/1', '{}'
      FROM generate_series(1, 5) AS i
      """)
    // Another daemon holds the slot: this connection takes its lock.
    let holder = try TestDatabase(url: db.url)
    try holder.sql("SELECT pg_advisory_lock(hashtext('sluice.slot.' || $1))", [db.slot])
    let standby = try sluice(db, ["run"])
    #expect(try eventually(20, "standing by") { standby.standardError.contains("standing by") })
    // The deliverer would read the outbox within 1 s; the standby has none.
    let watched = Date().addingTimeInterval(2.5)
    while Date() < watched { usleep(100_000) }
    #expect(receiver.requests.isEmpty)
    holder.connection.close()
    #expect(try eventually(30, "the new holder delivers") { receiver.requests.count == 5 })
    #expect(
      try eventually(10) { try db.scalar("SELECT count(*) FROM sluice.outbox WHERE status = 'delivered'") == "5" })
    standby.signal(SIGTERM)
    #expect(standby.waitForExit() == 0)
  }

  @Test func anEndpointThatIsDownDoesNotHoldBackTheStream() throws {
    let receiver = try WebhookReceiver()
    // The receiver answers 503 to everything: every delivery keeps failing.
    let db = try Self.setUp(
      "webhook_down", receiver, endpoints: [("edge", "/status/503")], webhooks: [("ping", "edge")])
    let daemon = try startDaemon(db, ["SLUICE_OUTBOX_BACKOFF_MS": "50"])
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type)
      SELECT 'd' || i, 'actor' || (i % 50), 'ping' FROM generate_series(1, 5000) AS i
      """)
    let end = try #require(try db.scalar("SELECT pg_current_wal_lsn()::text"))
    #expect(
      try eventually(60, "every event applied and acknowledged") {
        try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'applied'") == "5000"
          && db.scalar(
            "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = $2", [end, db.slot])
            == "t"
      })
    #expect(try db.scalar("SELECT count(*) FROM sluice.outbox WHERE status = 'pending'") == "5000")
    #expect(try eventually(20, "deliveries attempted meanwhile") { receiver.requests.count >= 50 })
    #expect(receiver.requests.allSatisfy { $0.status == 503 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// Attack review: a receiver's answer must not crash the daemon, nor make a delivery unrecordable.
  @Test func aHostileReceiverCannotCrashTheDaemonOrLoopItsDeliveries() throws {
    let receiver = try WebhookReceiver()
    let endpoints = [("huge", "/retry-after/10000000000000000"), ("nul", "/nul/500"), ("fine", "/ok")]
    let db = try Self.setUp(
      "webhook_hostile_receiver", receiver, endpoints: endpoints, webhooks: endpoints.map { ("to_\($0.0)", $0.0) })
    let daemon = try startDaemon(db, ["SLUICE_OUTBOX_BACKOFF_MS": "20", "SLUICE_OUTBOX_MAX_ATTEMPTS": "2"])
    try XPFixture.insert(db, endpoints.map { ("e_\($0.0)", "ann_\($0.0)", "to_\($0.0)", 1, nil) })
    func row(_ name: String) throws -> [String?] {
      try db.sql(
        """
        SELECT status, attempts::text, last_error,
               (next_attempt_at - now() BETWEEN interval '500 s' AND interval '601 s')::text
        FROM sluice.outbox WHERE endpoint = $1
        """, [name]
      ).rows.first ?? []
    }
    #expect(try eventually(20, "the NUL answer recorded, dead") { try row("nul").first == "dead" })
    #expect(try row("nul").prefix(3) == ["dead", "2", "HTTP 500"])
    #expect(try eventually(20) { try row("huge").prefix(2) == ["pending", "1"] })
    #expect(try row("huge").last == "true", "Retry-After beyond 10 minutes waits 10 minutes")
    #expect(try eventually(20) { try row("fine").first == "delivered" })
    #expect(receiver.requests.filter { $0.path == "/ok" }.count == 1)
    #expect(receiver.requests.filter { $0.path == "/nul/500" }.count == 2)
    #expect(daemon.isRunning)
    // `outbox retry` of a pending delivery sends it now, its attempts reset.
    try db.sql("UPDATE sluice.endpoints SET url = $1 WHERE name = 'huge'", [receiver.url("/ok")])
    let id = try #require(try db.scalar("SELECT id FROM sluice.outbox WHERE endpoint = 'huge'"))
    #expect(try runCommand(db, ["outbox", "retry", id]).0 == 0)
    #expect(try eventually(10, "sent at once") { try row("huge").prefix(2) == ["delivered", "1"] })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// Review: a receiver whose answer echoes the request's path (Express's 404
  /// page does) cannot put the URL's secret path or query into `last_error`,
  /// `outbox list` or a log line.
  @Test func anAnswerThatEchoesTheURLLeaksNoSecretOfIt() throws {
    let receiver = try WebhookReceiver()
    let endpoints = [("gone", "/echo/404/hook/tok3n?key=s3cret"), ("busy", "/echo/503/hook/tok3n?key=s3cret")]
    let db = try Self.setUp(
      "webhook_echo", receiver, endpoints: endpoints, webhooks: endpoints.map { ("to_\($0.0)", $0.0) })
    let daemon = try startDaemon(
      db, ["SLUICE_OUTBOX_BACKOFF_MS": "20", "SLUICE_OUTBOX_MAX_ATTEMPTS": "2", "SLUICE_LOG_LEVEL": "debug"])
    try XPFixture.insert(db, endpoints.map { ("e_\($0.0)", "ann_\($0.0)", "to_\($0.0)", 1, nil) })
    #expect(
      try eventually(20, "both dead: \((try? Self.outbox(db)) ?? [])") {
        let rows = try Self.outbox(db)
        return rows.count == 2 && rows.allSatisfy { $0[1] == "dead" }
      })
    // The receiver did echo the secret path (its log has what it answered).
    #expect(receiver.requests.map(\.status).sorted() == [404, 503, 503])
    let errors = try db.sql("SELECT endpoint, last_error FROM sluice.outbox ORDER BY endpoint").rows
    #expect(
      errors == [
        ["busy", "HTTP 503: <pre>Cannot POST [url]</pre>"], ["gone", "HTTP 404: <pre>Cannot POST [url]</pre>"],
      ])
    let (_, list, _) = try runCommand(db, ["outbox", "list", "--json"])
    #expect(list.contains("Cannot POST [url]"), "\(list)")
    let (_, status, _) = try runCommand(db, ["status", "--json"])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(daemon.standardError.contains("will retry"))
    for text in [list, status, daemon.standardError] + errors.map({ $0[1] ?? "" }) {
      #expect(!text.contains("tok3n"), "\(text)")
      #expect(!text.contains("s3cret"), "\(text)")
    }
  }

  /// Review: a batch handler that emits for every event of its run and
  /// rejects one of them queues nothing for that one (SPEC section 9: a
  /// rejected event queues nothing), and stays on the fast path after.
  @Test func aBatchHandlerThatRejectsAnEventItEmittedForQueuesNothingForIt() throws {
    let receiver = try WebhookReceiver()
    let db = try Self.setUp("webhook_batch_reject", receiver, endpoints: [("edge", "/ok")])
    try db.sql("INSERT INTO sluice.permission_rules (event_type, role) VALUES ('swift_emit_batch', 'anyone')")
    let daemon = try startDaemon(db, ["SLUICE_LOG_LEVEL": "debug"], binary: "sluice-fixtures")
    /// One source transaction: one run of the batch handler.
    func insert(_ ids: [String], rejecting: String) throws {
      let rows = ids.map { "('\($0)', 'ann', 'swift_emit_batch', '\($0 == rejecting ? #"{"reject": true}"# : "{}")')" }
      try db.sql("INSERT INTO xp.actions (id, user_id, type, payload) VALUES \(rows.joined(separator: ", "))")
    }
    try insert(["b1", "b2", "b3"], rejecting: "b2")
    #expect(
      try eventually(20, "the ledger") {
        try XPFixture.statuses(db) == ["b1": "applied", "b2": "rejected", "b3": "applied"]
      })
    #expect(try Self.outbox(db).map { $0[0] } == ["xp.actions/b1/1", "xp.actions/b3/1"])
    #expect(try eventually(20, "two deliveries") { receiver.requests.count >= 2 })
    // Again, now that the handler is known to do so.
    try insert(["c1", "c2", "c3"], rejecting: "c2")
    #expect(try eventually(20, "the second run") { try XPFixture.statuses(db).count == 6 })
    #expect(try XPFixture.statuses(db)["c2"] == "rejected")
    #expect(
      try Self.outbox(db).map { $0[0] } == ["xp.actions/b1/1", "xp.actions/b3/1", "xp.actions/c1/1", "xp.actions/c3/1"])
    #expect(try eventually(20, "four deliveries") { receiver.requests.count >= 4 })
    #expect(try eventually(10) { try Self.outbox(db).allSatisfy { $0[1] == "delivered" } })
    #expect(receiver.requests.map(\.id) == ["b1", "b3", "c1", "c3"].map { "xp.actions/\($0)/1" })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    // The first run was redone event by event; the second stayed on the fast path.
    let redone = daemon.standardError.components(separatedBy: "batch part redone").count - 1
    #expect(redone == 1, "\(redone) redone")
    #expect(daemon.standardError.contains("rejected an event it emitted for"))
  }

  /// Attack review: a client's own backlog to an endpoint that fails for it must not stall other actors.
  @Test func oneActorsFailingBacklogDoesNotStallOthers() throws {
    let receiver = try WebhookReceiver()
    let db = try Self.setUp(
      "webhook_stall", receiver, endpoints: [("edge", "/fail-if/mallory/503")], webhooks: [("ping", "edge")])
    let daemon = try startDaemon(db, ["SLUICE_OUTBOX_BACKOFF_MS": "600000"])
    try db.sql(
      "INSERT INTO xp.actions (id, user_id, type) SELECT 'm' || i, 'mallory', 'ping' FROM generate_series(1, 10050) i")
    #expect(
      try eventually(30, "mallory's deliveries queued") {
        try db.scalar("SELECT count(*) FROM sluice.outbox") == "10050"
      })
    try XPFixture.insert(db, [("alice-1", "alice", "ping", 1, nil)])
    #expect(
      try eventually(20, "alice's delivery, behind 10,050 of mallory's") {
        receiver.requests.contains { $0.id == "xp.actions/alice-1/1" && $0.status == 200 }
      })
    #expect(receiver.requests.filter { $0.status == 503 }.count == 1, "mallory's head waits for its retry")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// Review: an outbox row that another session holds locked (an operator's
  /// `SELECT ... FOR UPDATE` left open in psql) is sent, its outcome kept in
  /// memory and written once the lock goes. It is not sent again meanwhile,
  /// the deliverer never waits on it nor resets its session, and every other
  /// delivery goes once, in order: the locked one counts as done for its
  /// actor when delivered, and keeps its place when it failed.
  @Test func aRowLockedElsewhereIsNotResentAndDisturbsNothingElse() throws {
    let receiver = try WebhookReceiver()
    let endpoints = [("edge", "/ok"), ("flaky", "/fail/1/503"), ("slow", "/jitter/400/5")]
    let db = try Self.setUp("webhook_locked_row", receiver, endpoints: endpoints)
    // The slot first: creating it would wait for the locking transaction to end.
    try createSlot(db)
    // ann's a1 will be delivered while locked, carol's c1 will fail while locked.
    var queued = [("edge", "ann", "a1"), ("edge", "ann", "a2"), ("edge", "ann", "a3")]
    queued += [("flaky", "carol", "c1"), ("flaky", "carol", "c2")]
    queued += (0..<40).map { ("slow", "actor\($0 % 10)", "s\($0)") }
    for (endpoint, actor, event) in queued {
      try db.sql(
        """
        INSERT INTO sluice.outbox (endpoint, source, event_id, event_type, actor, idempotency_key, body)
        VALUES ($1, 'xp.actions', $3, 'ping', $2, 'xp.actions/' || $3 || '/1', '{}')
        """, [endpoint, actor, event])
    }
    func key(_ event: String) -> String { "xp.actions/\(event)/1" }
    func received(_ event: String) -> Int { receiver.requests.filter { $0.id == key(event) }.count }
    func row(_ event: String) throws -> [String?] {
      try db.sql("SELECT status, attempts::text FROM sluice.outbox WHERE idempotency_key = $1", [key(event)]).rows
        .first ?? []
    }
    let holder = try PGConnection(conninfo: db.url)
    defer { holder.close() }
    try holder.simpleQuery(
      "BEGIN; SELECT * FROM sluice.outbox WHERE idempotency_key IN ('\(key("a1"))', '\(key("c1"))') FOR UPDATE")
    let locked = Date()
    let daemon = try startDaemon(db, ["SLUICE_OUTBOX_BACKOFF_MS": "20"])
    let others = ["a2", "a3"] + (0..<40).map { "s\($0)" }
    #expect(
      try eventually(20, "the other deliveries written while a1 and c1 are locked: \(daemon.standardError)") {
        try others.allSatisfy { try row($0).first == "delivered" } && received("a1") >= 1 && received("c1") >= 1
      })
    // The lock is held for 15 s: three of the old lock timeouts.
    while Date() < locked.addingTimeInterval(15) { usleep(100_000) }
    #expect((1...2).contains(received("a1")), "a1 sent \(received("a1")) times while locked")
    #expect((1...2).contains(received("c1")), "c1 sent \(received("c1")) times while locked")
    #expect(received("c2") == 0, "c2 waits behind c1, which failed")
    #expect(try row("a1") == ["pending", "0"])
    #expect(try row("c1") == ["pending", "0"])
    try holder.simpleQuery("COMMIT")
    #expect(try eventually(5, "a1 written: \((try? row("a1")) ?? [])") { try row("a1") == ["delivered", "1"] })
    #expect(
      try eventually(10, "c1 and c2 delivered") { try row("c1").first == "delivered" && row("c2").first == "delivered" }
    )
    #expect(try row("c1") == ["delivered", "2"])
    #expect(received("a1") <= 2)
    for event in others { #expect(received(event) == 1, "\(event) sent \(received(event)) times") }
    let carol = receiver.requests.filter { $0.path == "/fail/1/503" }.map(\.id)
    #expect(
      carol.drop { $0 == key("c1") } == [key("c2"), key("c2")], "carol's in order, c2 after c1's last try: \(carol)")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(!daemon.standardError.contains("webhook delivery paused"), "\(daemon.standardError)")
  }

  /// Attack review: a SQL handler that once rejected is called through a guard on the
  /// fast path; its emits still name their event.
  @Test func aHandlerThatRejectedOnceStillEmitsOnTheFastPath() throws {
    let receiver = try WebhookReceiver()
    let db = try Self.setUp("webhook_guarded", receiver, endpoints: [("edge", "/ok")])
    try XPFixture.handler(
      db, "buy",
      """
      BEGIN
        IF (e->'row'->'payload'->>'xp')::int < 1 THEN PERFORM sluice.reject('nothing to buy'); END IF;
        PERFORM sluice.emit('edge', jsonb_build_object('buyer', e->>'actor'));
      END
      """)
    let daemon = try startDaemon(db, ["SLUICE_LOG_LEVEL": "debug"])
    try XPFixture.insert(db, [("bad", "ann", "buy", 0, nil)])
    #expect(try eventually(20) { try XPFixture.statuses(db)["bad"] == "rejected" })
    try XPFixture.insert(db, (0..<500).map { ("good\($0)", "user\($0 % 7)", "buy", 1, nil) })
    #expect(try eventually(30, "500 deliveries") { receiver.requests.count == 500 })
    #expect(
      try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'applied'") == "500")
    let redone = daemon.standardError.components(separatedBy: "batch part redone").count - 1
    #expect(redone <= 1, "the guarded batches stay on the fast path: \(redone) redone")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func endpointsRefuseSecretsThatAreNotStandardWebhooksSecrets() throws {
    let db = try TestDatabase("webhook_secrets")
    try XPFixture.install(db)
    for bad in ["secret", "whsec_", "whsec_c2hvcnQ=", "whsec_!!!!", "whsec_" + String(repeating: "QUFB", count: 30)] {
      #expect(throws: (any Error).self, "\(bad)") {
        try db.sql("INSERT INTO sluice.endpoints (name, url, secret) VALUES ('e', 'http://x/', $1)", [bad])
      }
    }
    let generated = try #require(try db.scalar("SELECT sluice.generate_webhook_secret()"))
    #expect(WebhookSecret(generated)?.key.count == 32)
    try db.sql("INSERT INTO sluice.endpoints (name, url, secret) VALUES ('e', 'http://x/', $1)", [generated])
    #expect(throws: (any Error).self) {
      try db.sql("INSERT INTO sluice.endpoints (name, url) VALUES ('f', 'file:///etc/passwd')")
    }
    #expect(throws: (any Error).self) { try db.sql("SELECT sluice.add_webhook('t', 'missing')") }
    // A batch that queues a delivery commits synchronously, even when begun asynchronous.
    try db.sql("BEGIN; SET LOCAL synchronous_commit = off")
    try db.sql("SELECT sluice.queue_delivery('e', '{}', 'x.y', '1', 't', 'ann')")
    #expect(try db.scalar("SHOW synchronous_commit") == "on")
    try db.sql("ROLLBACK")
  }
}

/// The published Standard Webhooks example: libcrypto's HMAC and our header rules.
@Suite struct WebhookSigningTests {
  @Test func signsThePublishedExample() throws {
    let secret = try #require(WebhookSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
    let message = WebhookMessage(
      id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1_614_265_330, body: #"{"test": 2432232314}"#,
      endpoint: "e", eventType: "t", eventID: "i")
    #expect(secret.signature(of: message) == "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
    let headers = Dictionary(uniqueKeysWithValues: message.headers(signature: "sig").map { ($0.name, $0.value) })
    #expect(headers["webhook-signature"] == "v1,sig")
    #expect(headers["webhook-id"] == "msg_p5jXN8AQM9LWM0D4loKWxJek")
    #expect(headers["Idempotency-Key"] == "msg_p5jXN8AQM9LWM0D4loKWxJek")
  }

  @Test func clientTextCannotBreakAHeader() {
    #expect(WebhookMessage.headerValue("a\r\nEvil: 1") == "a%0D%0AEvil:%201")
    #expect(WebhookMessage.headerValue("100%") == "100%25")
    #expect(WebhookMessage.headerValue("é") == "%C3%A9")
    #expect(WebhookSecret("whsec_c2hvcnQ=") == nil)
    #expect(WebhookSecret("nope") == nil)
  }
}

/// docs/webhooks.md: its quoted SQL and receiver, run for real.
@Suite struct EdgeFunctionTests {
  @Test func readmeQuotesTheTestedFiles() throws {
    let readme = try String(
      contentsOf: ExamplesTests.repository.appendingPathComponent("docs/webhooks.md"), encoding: .utf8)
    for file in ["edge_function.sql", "receiver.py"] {
      let text = try String(contentsOf: AddHandlerTests.examples.appendingPathComponent(file), encoding: .utf8)
      #expect(readme.contains(text), "docs/webhooks.md must quote ReadmeExamples/\(file) verbatim")
    }
  }

  @Test func theReceiverVerifiesAndAppliesEachDeliveryOnce() throws {
    let db = try TestDatabase("edge_function")
    try ExamplesTests.load(db)
    let port = Int(try freePort())
    let sql = try String(
      contentsOf: AddHandlerTests.examples.appendingPathComponent("edge_function.sql"), encoding: .utf8)
    try db.sql(sql.replacingOccurrences(of: "127.0.0.1:8000", with: "127.0.0.1:\(port)"))
    try db.sql("INSERT INTO sluice.actor_roles (actor, role) VALUES ('ann', 'player')")
    let secret = try #require(try db.scalar("SELECT secret FROM sluice.endpoints WHERE name = 'rewards'"))
    let effects = NSTemporaryDirectory() + "sluice-effects-\(getpid())-\(port).db"
    defer { try? FileManager.default.removeItem(atPath: effects) }
    let receiver = try ChildProcess(
      "/usr/bin/env",
      [
        "PYTHONPATH=\(ExamplesTests.repository.appendingPathComponent(".build-py").path)",
        "WEBHOOK_SECRET=\(secret)", "PORT=\(port)", "EFFECTS_DB=\(effects)", "python3",
        AddHandlerTests.examples.appendingPathComponent("receiver.py").path,
      ], environment: [:])
    defer { receiver.signal(SIGKILL) }
    let daemon = try startDaemon(db, binary: "sluice-examples")
    try db.sql(
      """
      INSERT INTO game.actions (id, user_id, type, payload) VALUES
        ('00000000-0000-0000-0000-000000000001', 'ann', 'purchase', '{"item": "sword"}'),
        ('00000000-0000-0000-0000-000000000002', 'ann', 'purchase', '{}'),
        ('00000000-0000-0000-0000-000000000003', 'ann', 'level_up', '{"level": 2}'),
        ('00000000-0000-0000-0000-000000000004', 'bob', 'purchase', '{"item": "shield"}')
      """)
    let first = "game.actions/00000000-0000-0000-0000-000000000001/1"
    let levelUp = "game.actions/00000000-0000-0000-0000-000000000003/1"
    #expect(
      try eventually(20, "two effects applied: \(receiver.standardOutput) \(receiver.standardError)") {
        receiver.standardOutput.contains("applied \(first)") && receiver.standardOutput.contains("applied \(levelUp)")
      })
    // The rejected purchase and bob's denied one sent nothing.
    #expect(try db.scalar("SELECT count(*) FROM sluice.outbox") == "2")
    #expect(
      try eventually(10) { try db.scalar("SELECT count(*) FROM sluice.outbox WHERE status = 'delivered'") == "2" })
    // The same delivery again (as after a crash): verified, and not applied twice.
    let body = try #require(try db.scalar("SELECT body::text FROM sluice.outbox WHERE idempotency_key = $1", [first]))
    let message = WebhookMessage(
      id: first, timestamp: Int64(Date().timeIntervalSince1970), body: body, endpoint: "rewards",
      eventType: "purchase", eventID: "00000000-0000-0000-0000-000000000001")
    let signature = try #require(WebhookSecret(secret)).signature(of: message)
    #expect(try post(port: port, message.headers(signature: signature), body) == 200)
    #expect(try eventually(10) { receiver.standardOutput.contains("already applied \(first)") })
    #expect(receiver.standardOutput.components(separatedBy: "applied \(first):").count == 2)
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// One POST through libcurl (the daemon's own client, used directly).
  func post(port: Int, _ headers: [(name: String, value: String)], _ body: String) throws -> Int? {
    let transfers = try HTTPTransfers()
    try transfers.start(
      HTTPRequest(
        tag: 1, url: "http://127.0.0.1:\(port)/rewards", headers: headers, body: Array(body.utf8),
        timeoutMilliseconds: 5000))
    let deadline = Date().addingTimeInterval(10)
    while Date() < deadline {
      if let outcome = transfers.perform().first { return outcome.status }
      transfers.wait(milliseconds: 100)
    }
    return nil
  }
}
