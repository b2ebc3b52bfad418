import Foundation
import Sluice
import SluicePostgres
import Testing

@Suite(.serialized) struct OperationsTests {
  /// A backlog of `transactions` × 100 awards for u0…u9 (all players); returns expected totals.
  func backlog(_ db: TestDatabase, transactions: Range<Int>, seed: UInt64) throws -> [String: Int] {
    var random = SeededGenerator(seed: seed &+ UInt64(transactions.lowerBound))
    var expected: [String: Int] = [:]
    for t in transactions {
      let rows = (0..<100).map { r -> (String, String, String, Int, String?) in
        let user = "u\(Int.random(in: 0..<10, using: &random))"
        let xp = Int.random(in: 1...50, using: &random)
        expected[user, default: 0] += xp
        return (String(format: "e%06d", t * 100 + r), user, "award", xp, nil)
      }
      try XPFixture.insert(db, rows)
    }
    return expected
  }

  func merge(_ a: [String: Int], _ b: [String: Int]) -> [String: Int] { a.merging(b, uniquingKeysWith: +) }

  @Test(arguments: [
    ("SLUICE_BATCH_SIZE", "lots"), ("SLUICE_MAX_ATTEMPTS", "-1"), ("SLUICE_METRICS_ADDR", "nowhere"),
    ("SLUICE_LOG_FORMAT", "yaml"), ("SLUICE_SLOT", "Has Spaces"), ("SLUICE_DATABASE_URL", ""),
  ])
  func badConfigurationExits78NamingTheVariable(_ variable: String, _ value: String) throws {
    var environment = ["SLUICE_DATABASE_URL": "postgresql://127.0.0.1:1/none"]
    environment[variable] = value
    let process = try ChildProcess("sluice", ["run"], environment: environment)
    #expect(process.waitForExit() == 78)
    let lines = process.standardError.split(separator: "\n")
    #expect(lines.count == 1, "one line: \(process.standardError)")
    #expect(lines.first?.contains(variable) == true)
  }

  @Test func missingDatabaseURLExits78() throws {
    let process = try ChildProcess("sluice", ["status"], environment: [:])
    #expect(process.waitForExit() == 78)
    #expect(process.standardError.contains("SLUICE_DATABASE_URL"))
  }

  @Test func passwordsNeverAppear() throws {
    let process = try ChildProcess(
      "sluice", ["check"], environment: ["SLUICE_DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/none"])
    #expect(process.waitForExit() == 1)
    #expect(process.standardOutput.contains("postgresql://app:***@127.0.0.1:1/none"))
    #expect(!(process.standardOutput + process.standardError).contains("hunter2"))
  }

  @Test func sigtermMidBacklogExitsPromptlyAndRestartFinishesOnce() throws {
    let db = try TestDatabase("sigterm")
    try XPFixture.install(db)
    try XPFixture.grant(db, (0..<10).map { "u\($0)" })
    let environment = ["SLUICE_BATCH_SIZE": "200"]
    try createSlot(db, environment)
    let expected = try backlog(db, transactions: 0..<150, seed: 7)
    let daemon = try startDaemon(db, environment)
    #expect(try eventually { try XPFixture.ledgerCount(db) >= 2_000 })
    let sent = Date()
    daemon.signal(SIGTERM)
    let atSignal = try XPFixture.ledgerCount(db)
    #expect(daemon.waitForExit(seconds: 5) == 0, "\(daemon.standardError)")
    #expect(Date().timeIntervalSince(sent) < 5)
    let atStop = try XPFixture.ledgerCount(db)
    print("ledger rows at SIGTERM: \(atSignal), at exit: \(atStop), of 15000")
    let again = try startDaemon(db, environment)
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 15_000 })
    again.signal(SIGTERM)
    #expect(again.waitForExit() == 0)
    #expect(try XPFixture.totals(db) == expected)
  }

  /// A daemon whose handler hangs (pg_sleep) on the event in flight.
  static func hangingDaemon(_ name: String) throws -> (TestDatabase, ChildProcess) {
    let db = try TestDatabase(name)
    try XPFixture.install(db)
    try db.sql(
      """
      CREATE FUNCTION xp.hang(e jsonb) RETURNS void LANGUAGE plpgsql AS $$
      BEGIN
        IF (SELECT failing FROM xp.switches WHERE name = 'flaky') THEN PERFORM pg_sleep(600); END IF;
        INSERT INTO xp.totals VALUES (e->>'actor', 1) ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + 1;
      END $$;
      INSERT INTO sluice.handlers VALUES ('hang', 'xp.hang');
      INSERT INTO sluice.permission_rules (event_type, role) VALUES ('hang', 'anyone');
      """)
    let daemon = try startDaemon(db)
    try XPFixture.insert(db, [("stuck", "ann", "hang", 1, nil)])
    #expect(
      try eventually(20, "the handler to hang") {
        try db.scalar("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%xp%hang%' AND state = 'active'") != "0"
      })
    return (db, daemon)
  }

  /// The hanging handler fixed and the daemon restarted: the event that was
  /// in flight applies once.
  static func fixAndRestart(_ db: TestDatabase, sourceLocation: SourceLocation = #_sourceLocation) throws {
    try db.sql("UPDATE xp.switches SET failing = false")
    let again = try startDaemon(db)
    #expect(try eventually(30) { try XPFixture.statuses(db)["stuck"] == "applied" }, sourceLocation: sourceLocation)
    again.signal(SIGTERM)
    #expect(again.waitForExit() == 0, sourceLocation: sourceLocation)
    #expect(try XPFixture.totals(db) == ["ann": 1], sourceLocation: sourceLocation)
  }

  @Test func aHungHandlerCannotHoldAStopForever() throws {
    let (db, daemon) = try Self.hangingDaemon("hung")
    let sent = Date()
    daemon.signal(SIGTERM)
    let status = daemon.waitForExit(seconds: Double(Daemon.maximumStopSeconds) + 10)
    let waited = Date().timeIntervalSince(sent)
    #expect(status == 1, "\(daemon.standardError.suffix(400))")
    #expect(waited >= Double(Daemon.maximumStopSeconds) - 1 && waited < Double(Daemon.maximumStopSeconds) + 10)
    #expect(daemon.standardError.contains("graceful stop took longer"))
    // The dead daemon's backend gives up its statement (client_connection_check_interval)
    // and with it the slot's lock.
    try Self.fixAndRestart(db)
  }

  /// The old signal handler's promise, kept on swift-service-lifecycle: a
  /// second SIGTERM (or Ctrl-C) does not wait for the stop limit.
  @Test func aSecondSignalExitsAtOnce() throws {
    let (_, daemon) = try Self.hangingDaemon("second")
    daemon.signal(SIGTERM)
    #expect(try eventually(5) { daemon.standardError.contains("stopping after the batch in flight") })
    daemon.signal(SIGTERM)
    // Within 3 s (else waitForExit kills it and returns nil), not after the 20 s stop limit.
    #expect(daemon.waitForExit(seconds: 3) == 128 + SIGTERM)
  }

  /// A stop whose connections are cut meanwhile (a partition, a restart) is
  /// still a stop: exit 0, and the batch in flight, never acknowledged,
  /// applies once on the next start.
  @Test func aStopWhoseConnectionIsCutMeanwhileExitsZero() throws {
    let (db, daemon) = try Self.hangingDaemon("stopcut")
    daemon.signal(SIGTERM)
    #expect(try eventually(5) { daemon.standardError.contains("stopping after the batch in flight") })
    try db.sql(
      """
      SELECT pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = current_database() AND application_name LIKE 'sluice%' AND pid <> pg_backend_pid()
      """)
    #expect(daemon.waitForExit(seconds: 10) == 0, "\(daemon.standardError.suffix(600))")
    #expect(daemon.standardError.contains("the session failed while stopping"))
    try Self.fixAndRestart(db)
  }

  /// A daemon whose handling stage stalls (a handler runs 12 s) while WAL
  /// keeps coming stops reading its stream, and its receive window stays
  /// closed for seconds. That daemon is busy, not silent: the server must not
  /// end its stream (a 5 s `tcp_user_timeout` on the walsender did, on
  /// Linux 5.11 and later), and nothing reconnects.
  @Test func aBusyDaemonKeepsItsStream() throws {
    let db = try TestDatabase("busy")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try XPFixture.handler(db, "slow", language: "sql", "SELECT pg_sleep(12)")
    try createSlot(db)
    let daemon = try startDaemon(db, ["SLUICE_HANDLER_TIMEOUT_MS": "30000"])
    try XPFixture.insert(db, [("slow", "ann", "slow", 0, nil)])
    #expect(
      try eventually(20, "the handler to sleep") {
        try db.scalar(
          "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()"
        ) != "0"
      })
    // About 30 MB of events: far more than the daemon's queue and both sockets' buffers hold.
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload)
        SELECT 'b' || g, 'ann', 'award', jsonb_build_object('xp', 1, 'pad', repeat('x', 600)) FROM generate_series(1, 40000) g
      """)
    #expect(try eventually(120) { try XPFixture.ledgerCount(db) == 40001 })
    #expect(!daemon.standardError.contains("reconnecting"), "\(daemon.standardError.suffix(1500))")
    #expect(try XPFixture.totals(db) == ["ann": 40000])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func terminatedBackendsAreSurvived() throws {
    let db = try TestDatabase("terminate")
    try XPFixture.install(db)
    try XPFixture.grant(db, (0..<10).map { "u\($0)" })
    try createSlot(db)
    var expected = try backlog(db, transactions: 0..<100, seed: 11)
    let daemon = try startDaemon(db, ["SLUICE_BATCH_SIZE": "100"])
    for (round, threshold) in [1_500, 4_000, 6_500, 9_000].enumerated() {
      #expect(try eventually(60) { try XPFixture.ledgerCount(db) >= threshold })
      // Alternately the walsender and the daemon's SQL (handler) backend.
      let which =
        round % 2 == 0
        ? "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1"
        : "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'sluice' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
      _ = try db.sql(which, round % 2 == 0 ? [db.slot] : [])
      expected = merge(expected, try backlog(db, transactions: (100 + round * 10)..<(110 + round * 10), seed: 11))
    }
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 14_000 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    #expect(try XPFixture.totals(db) == expected)
    #expect(daemon.standardError.contains("reconnecting"))
  }

  @Test func postgresRestartMidBacklog() throws {
    let cluster = try PrivateCluster()
    defer { cluster.stop() }
    let admin = try PGConnection(conninfo: cluster.url)
    try admin.query("CREATE DATABASE restart")
    admin.close()
    let db = try TestDatabase(url: try TestCluster.databaseURL(cluster.url, "restart"))
    try XPFixture.install(db)
    try XPFixture.grant(db, (0..<10).map { "u\($0)" })
    try createSlot(db)
    var expected = try backlog(db, transactions: 0..<120, seed: 13)
    let daemon = try startDaemon(db, ["SLUICE_BATCH_SIZE": "100"])
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) >= 3_000 })
    try cluster.restart()
    let reopened = try TestDatabase(url: db.url)
    expected = merge(expected, try backlog(reopened, transactions: 120..<140, seed: 13))
    #expect(try eventually(60) { try XPFixture.ledgerCount(reopened) == 14_000 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    #expect(try XPFixture.totals(reopened) == expected)
    #expect(daemon.standardError.contains("reconnecting"))
  }

  @Test func standbyTakesOverWithinTenSeconds() throws {
    let db = try TestDatabase("failover")
    try XPFixture.install(db)
    try XPFixture.grant(db, (0..<10).map { "u\($0)" })
    try createSlot(db)
    var expected = try backlog(db, transactions: 0..<100, seed: 17)
    let active = try startDaemon(db, ["SLUICE_BATCH_SIZE": "100"])
    let standby = try sluice(db, ["run"], ["SLUICE_BATCH_SIZE": "100"])
    #expect(try eventually { standby.standardError.contains("standing by") })
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) >= 4_000 })
    active.signal(SIGKILL)
    let killed = Date()
    #expect(active.waitForExit() != 0)
    #expect(try eventually(10, "the standby to stream") { standby.standardError.contains("info streaming") })
    let takeover = Date().timeIntervalSince(killed)
    print("standby streaming \(String(format: "%.2f", takeover)) s after the active daemon was killed")
    #expect(takeover < 10)
    expected = merge(expected, try backlog(db, transactions: 100..<110, seed: 17))
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 11_000 })
    standby.signal(SIGTERM)
    #expect(standby.waitForExit() == 0)
    #expect(try XPFixture.totals(db) == expected)
  }

  @Test func metricsMatchTheLedger() throws {
    let db = try TestDatabase("metrics")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["u1"])
    let port = try freePort()
    let daemon = try startDaemon(db, ["SLUICE_METRICS_ADDR": "127.0.0.1:\(port)"])
    try XPFixture.insert(db, (0..<30).map { (String(format: "m%03d", $0), $0 % 3 == 0 ? "u2" : "u1", "award", 5, nil) })
    try XPFixture.insert(db, [("m-dead", "u1", "later", 1, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 31 })
    // A batch is counted once final (its COMMIT's result read), a moment after its rows are visible.
    var metrics = ""
    #expect(
      try eventually {
        metrics = try httpGet(port: port, path: "/metrics")
        return metrics.contains("sluice_commit_to_applied_seconds_count 31")
      })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(metrics.hasPrefix("HTTP/1.0 200"))
    for row in try db.sql("SELECT event_type, status, count(*) FROM sluice.event_log GROUP BY 1, 2").rows {
      let series = "sluice_events_total{type=\"\(row[0]!)\",status=\"\(row[1]!)\"} \(row[2]!)"
      #expect(metrics.contains(series), "missing \(series)")
    }
    #expect(metrics.contains("sluice_commit_to_applied_seconds_count 31"))
    #expect(metrics.contains("sluice_replication_lag_bytes "))
    #expect(metrics.contains("sluice_retained_wal_bytes "))
    #expect(metrics.contains("sluice_reconnects_total 0"))
    #expect(metrics.contains("sluice_streaming 1"))
    #expect(metrics.contains("# TYPE sluice_batch_duration_seconds histogram"))
  }

  @Test func healthzAndUnknownPaths() throws {
    let db = try TestDatabase("healthz")
    try XPFixture.install(db)
    let port = try freePort()
    let daemon = try startDaemon(db, ["SLUICE_METRICS_ADDR": "127.0.0.1:\(port)"])
    #expect(try httpGet(port: port, path: "/healthz").hasPrefix("HTTP/1.0 200"))
    #expect(try httpGet(port: port, path: "/nope").hasPrefix("HTTP/1.0 404"))
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func notifySocketGetsReadyAndStopping() throws {
    let db = try TestDatabase("notify")
    try XPFixture.install(db)
    let path = NSTemporaryDirectory() + "sluice-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
    let socket = try DatagramSocket(path: path)
    defer { socket.close() }
    let daemon = try startDaemon(db, ["NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"])
    var received: [String] = []
    #expect(
      try eventually(10, "READY=1") {
        received += socket.receiveAll()
        return received.contains { $0.contains("READY=1") }
      })
    #expect(received.contains { $0.contains("STATUS=streaming") })
    // The loop is idle but alive: the watchdog keeps being fed.
    #expect(
      try eventually(5, "WATCHDOG=1") {
        received += socket.receiveAll()
        return received.contains { $0.contains("WATCHDOG=1") }
      })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    received += socket.receiveAll()
    #expect(received.contains { $0.contains("STOPPING=1") })
    let ready = received.firstIndex { $0.contains("READY=1") } ?? .max
    let stopping = received.firstIndex { $0.contains("STOPPING=1") } ?? -1
    #expect(ready < stopping)
  }

  @Test func statusAndCheckTellTheOperator() throws {
    let db = try TestDatabase("status")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["u1"])
    let (_, beforeRun, _) = try runCommand(db, ["status"])
    #expect(beforeRun.contains("does not exist yet"))
    let daemon = try startDaemon(db)
    try XPFixture.insert(
      db, [("s1", "u1", "award", 5, nil), ("s2", "u9", "award", 5, nil), ("s3", "u1", "later", 5, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    let (status, json, _) = try runCommand(db, ["status", "--json"])
    #expect(status == 0)
    let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
    let slot = object?["slot"] as? [String: Any]
    #expect(slot?["streaming"] as? Bool == true)
    #expect(slot?["lag_bytes"] is Int)
    #expect(slot?["retained_wal_bytes"] is Int)
    #expect(
      object?["events"] as? [String: Int] == ["applied": 1, "denied": 1, "dead": 1, "rejected": 0, "duplicate": 0])
    #expect((object?["dead"] as? [[String: Any]])?.first?["event_id"] as? String == "s3")
    // The slot is held by the running daemon: check says who holds it, and is content.
    let (checkStatus, check, _) = try runCommand(db, ["check"])
    #expect(checkStatus == 0, "\(check)")
    #expect(check.contains("is held by pid"))
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)

    // A slot held by something else, a role without REPLICATION, an unreachable host.
    let tail = try ChildProcess(
      "sluice", ["tail", "--slot", db.slot], environment: ["SLUICE_DATABASE_URL": db.url])
    #expect(try eventually { tail.standardError.contains("streaming") })
    let (heldStatus, held, _) = try runCommand(db, ["check"])
    #expect(heldStatus == 1)
    #expect(held.contains("FAIL  slot \(db.slot) is held by pid") && held.contains("sluice-tail"))
    tail.signal(SIGTERM)
    #expect(tail.waitForExit() == 0)
    try db.sql("DROP ROLE IF EXISTS plain_\(db.slot); CREATE ROLE plain_\(db.slot) LOGIN")
    let plain = try TestCluster.databaseURL(db.url, db.slot).replacingOccurrences(
      of: "postgres@", with: "plain_\(db.slot)@")
    let process = try ChildProcess(
      "sluice", ["check"], environment: ["SLUICE_DATABASE_URL": plain, "SLUICE_SLOT": db.slot])
    #expect(process.waitForExit() == 1)
    #expect(process.standardOutput.contains("FAIL  role may replicate"))
    #expect(process.standardOutput.contains("fix: ALTER ROLE"))
    // The replication connection is refused too; the pg_hba advice is for a
    // logical walsender, matched by its database, not the `replication` keyword.
    #expect(process.standardOutput.contains("FAIL  replication connection accepted"))
    #expect(process.standardOutput.contains("matched by its database name"))
    #expect(!process.standardOutput.contains("host replication"))
    let unreachable = try ChildProcess(
      "sluice", ["check"], environment: ["SLUICE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"])
    #expect(unreachable.waitForExit() == 1)
    #expect(unreachable.standardOutput.contains("FAIL  connect to"))
    #expect(unreachable.standardOutput.contains("fix: check host, port"))
  }

  @Test func unitFilePassesVerifyAndSecurityBar() throws {
    guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else {
      Issue.record("systemd-analyze is missing: scripts/install-deps installs systemd")
      return
    }
    let unit = ExamplesTests.repository.appendingPathComponent("systemd/sluice.service")
    // verify needs ExecStart to exist: check a copy that points at the built binary.
    let directory = NSTemporaryDirectory() + "sluice-unit-\(getpid())"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let text = try String(contentsOf: unit, encoding: .utf8).replacingOccurrences(
      of: "ExecStart=/usr/bin/sluice",
      with: "ExecStart=" + TestCluster.binDirectory.appendingPathComponent("sluice").path)
    let copy = directory + "/sluice.service"
    try text.write(toFile: copy, atomically: true, encoding: .utf8)
    // A poison event is counted across restarts: systemd must not stop restarting first.
    #expect(text.contains("\nStartLimitIntervalSec=0\n"))
    let verify = try capture(["/usr/bin/systemd-analyze", "verify", copy])
    #expect(!verify.output.contains("sluice.service:"), "verify: \(verify.output)")
    let security = try capture(["/usr/bin/systemd-analyze", "security", "--offline=true", unit.path])
    let score = security.output.split(separator: "\n").last { $0.contains("Overall exposure level") }
      .flatMap { line in line.split(separator: " ").compactMap { Double($0) }.first }
    print("systemd-analyze security: \(score.map { String($0) } ?? "?")")
    #expect(score != nil && score! <= 2.0, "\(security.output.suffix(300))")
    for required in [
      "Type=notify", "EnvironmentFile=/etc/sluice/sluice.env", "Restart=on-failure", "RestartPreventExitStatus=78",
      "WatchdogSec=", "TimeoutStopSec=", "User=sluice",
    ] {
      #expect(text.contains(required), "unit lacks \(required)")
    }
    // The example environment file lists every variable the daemon reads.
    let example = try String(
      contentsOf: ExamplesTests.repository.appendingPathComponent("systemd/sluice.env.example"), encoding: .utf8)
    for variable in [
      "SLUICE_DATABASE_URL", "SLUICE_SLOT", "SLUICE_PUBLICATION", "SLUICE_BATCH_SIZE", "SLUICE_BATCH_TIMEOUT_MS",
      "SLUICE_MAX_ATTEMPTS", "SLUICE_METRICS_ADDR", "SLUICE_LOG_LEVEL", "SLUICE_LOG_FORMAT",
    ] {
      #expect(example.contains(variable + "="), "sluice.env.example lacks \(variable)")
    }
  }
}

/// Runs a command to its end; its stdout, then its stderr.
func capture(_ command: [String]) throws -> (status: Int32, output: String) {
  let process = try ChildProcess(command[0], Array(command.dropFirst()), environment: [:])
  let status = process.waitForExit(seconds: 120) ?? -1
  return (status, process.standardOutput + process.standardError)
}

func freePort() throws -> UInt16 {
  let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  defer { close(descriptor) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  address.sin_port = 0
  var length = socklen_t(MemoryLayout<sockaddr_in>.size)
  let bound = withUnsafeMutablePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0
    }
  }
  guard bound else { throw SetupError("no free port") }
  return UInt16(bigEndian: address.sin_port)
}

/// A plain HTTP GET on 127.0.0.1, returning the whole response.
/// A TCP connection to 127.0.0.1:`port`.
func connectLoopback(port: UInt16) throws -> Int32 {
  let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  address.sin_port = port.bigEndian
  let connected = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
    }
  }
  guard connected else {
    close(descriptor)
    throw SetupError("cannot connect to 127.0.0.1:\(port)")
  }
  return descriptor
}

func httpGet(port: UInt16, path: String) throws -> String {
  let descriptor = try connectLoopback(port: port)
  defer { close(descriptor) }
  let request = Array("GET \(path) HTTP/1.0\r\nHost: localhost\r\n\r\n".utf8)
  _ = request.withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, 0) }
  var response: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 65536)
  while true {
    let count = recv(descriptor, &buffer, buffer.count, 0)
    if count <= 0 { break }
    response += buffer[..<count]
  }
  return String(decoding: response, as: UTF8.self)
}

/// The receiving end of `NOTIFY_SOCKET`.
final class DatagramSocket {
  let descriptor: Int32
  let path: String

  init(path: String) throws {
    self.path = path
    unlink(path)
    descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
      }
    }
    guard bound else { throw SetupError("cannot bind \(path)") }
    chmod(path, 0o777)
  }

  /// Every datagram waiting now.
  func receiveAll() -> [String] {
    var messages: [String] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
      let count = recv(descriptor, &buffer, buffer.count, Int32(MSG_DONTWAIT))
      if count <= 0 { break }
      messages.append(String(decoding: buffer[..<count], as: UTF8.self))
    }
    return messages
  }

  func close() {
    Glibc.close(descriptor)
    unlink(path)
  }
}
