import Foundation
import Sluice
import SluicePostgres
import Synchronization
import Testing

/// The system soak (`scripts/soak --duration D`; not part of `scripts/test`):
/// the game and shop examples under a steady load from several writers, two
/// daemons on one slot (each in a network namespace of its own, so either
/// can be cut off), webhooks to a receiver that fails a fifth of the
/// attempts and sometimes hangs, retention and outcomes on, while faults
/// come at random times (seeded). At the end every table of derived state
/// is recounted from the source rows (copied as written, since retention
/// deletes them) and the ledger: nothing lost, nothing doubled. Needs root
/// and iproute2.
@Suite(.serialized) struct SoakTests {
  static let seconds = ProcessInfo.processInfo.environment["SLUICE_SOAK_SECONDS"].flatMap { Double($0) }
  static let ip = "/usr/sbin/ip"

  enum Fault: String, CaseIterable {
    case sigkillActive = "SIGKILL active", sigkillStandby = "SIGKILL standby"
    case sigtermActive = "SIGTERM active", sigtermStandby = "SIGTERM standby"
    case restartPostgres = "restart Postgres", killWalsender = "terminate walsender"
    case killHandlerBackend = "terminate handler backend", partition = "partition the active daemon"
    case poisonKill = "poison: handler kills its backend", poisonHang = "poison: handler hangs past its timeout"
  }

  /// Where the daemons reach Postgres and the receiver: an address of the
  /// host's own, routed to from each namespace over its veth pair.
  static let serverAddress = "169.254.90.1"

  /// A daemon's network namespace and its link to the host.
  struct Node {
    var index: Int
    var namespace: String
    var hostSide: String
    var daemonSide: String
    var hostAddress: String { "169.254.\(91 + index).1" }
    var daemonAddress: String { "169.254.\(91 + index).2" }
  }

  static func ip(_ arguments: String...) throws { _ = try PrivateCluster.run([ip] + arguments) }

  static func makeNode(_ index: Int, tag: String) throws -> Node {
    let node = Node(
      index: index, namespace: "sluice-soak-\(tag)-\(index)", hostSide: "ssh\(tag)\(index)",
      daemonSide: "ssn\(tag)\(index)")
    removeNode(node)
    try ip("netns", "add", node.namespace)
    try ip("link", "add", node.hostSide, "type", "veth", "peer", "name", node.daemonSide)
    try ip("link", "set", node.daemonSide, "netns", node.namespace)
    try ip("addr", "add", "\(node.hostAddress)/24", "dev", node.hostSide)
    try ip("link", "set", node.hostSide, "up")
    try ip("netns", "exec", node.namespace, Self.ip, "addr", "add", "\(node.daemonAddress)/24", "dev", node.daemonSide)
    try ip("netns", "exec", node.namespace, Self.ip, "link", "set", node.daemonSide, "up")
    try ip("netns", "exec", node.namespace, Self.ip, "link", "set", "lo", "up")
    try ip(
      "netns", "exec", node.namespace, Self.ip, "route", "add", "\(serverAddress)/32", "via", node.hostAddress)
    return node
  }

  static func removeNode(_ node: Node) {
    _ = try? PrivateCluster.run([ip, "netns", "delete", node.namespace])
    _ = try? PrivateCluster.run([ip, "link", "delete", node.hostSide])
  }

  /// How many of these poison events are not yet `dead` (still retried).
  static func undecided(_ ids: [String], _ db: TestDatabase) throws -> Int {
    let decided = try db.scalar(
      "SELECT count(*) FROM sluice.event_log WHERE source = 'game.actions' AND event_id = ANY($1::text[]) AND status = 'dead'",
      [PGArray.literal(ids)])
    return ids.count - (Int(decided ?? "") ?? 0)
  }

  /// Peak resident memory of a process, in MiB (0 once it is gone).
  /// A crash's report from its first line (the thread that crashed and its
  /// frames), else the log's last lines.
  static func crashOrTail(_ log: String) -> String {
    if let crash = log.range(of: "*** Program crashed") ?? log.range(of: "Fatal error") {
      return String(log[crash.lowerBound...].prefix(6000))
    }
    return String(log.suffix(800))
  }

  static func peakRSS(_ process: ChildProcess) -> Double {
    let status =
      (try? String(contentsOfFile: "/proc/\(process.pid)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
    return (Double(line.split(separator: " ").dropFirst().first ?? "") ?? 0) / 1024
  }

  @Test(.enabled(if: SoakTests.seconds != nil, "scripts/soak runs it (SLUICE_SOAK_SECONDS)"))
  func systemSoak() throws {
    let seconds = try #require(Self.seconds)
    guard getuid() == 0, FileManager.default.isExecutableFile(atPath: Self.ip) else {
      Issue.record("the soak needs root and iproute2 (scripts/install-deps installs it)")
      return
    }
    let seed = testSeed(default: 424_242)
    var random = SeededGenerator(seed: seed)
    let tag = String(getpid() % 10_000)
    // Every daemon's log, the faults' timeline and the server's log: kept when the soak fails.
    let logs = "/tmp/sluice-soak-\(tag)"
    try? FileManager.default.removeItem(atPath: logs)
    try FileManager.default.createDirectory(atPath: logs, withIntermediateDirectories: true)
    func log(_ file: String, _ text: String) {
      guard
        let handle = FileHandle(forWritingAtPath: "\(logs)/\(file)")
          ?? {
            FileManager.default.createFile(atPath: "\(logs)/\(file)", contents: nil)
            return FileHandle(forWritingAtPath: "\(logs)/\(file)")
          }()
      else { return }
      handle.seekToEndOfFile()
      handle.write(Data(text.utf8))
      try? handle.close()
    }

    // The network: the server's address on the host's loopback, a namespace per daemon.
    _ = try? PrivateCluster.run([Self.ip, "addr", "del", "\(Self.serverAddress)/32", "dev", "lo"])
    try Self.ip("addr", "add", "\(Self.serverAddress)/32", "dev", "lo")
    defer { _ = try? PrivateCluster.run([Self.ip, "addr", "del", "\(Self.serverAddress)/32", "dev", "lo"]) }
    let nodes = try (0..<2).map { try Self.makeNode($0, tag: tag) }
    defer { nodes.forEach(Self.removeNode) }

    // Postgres, listening there too, with its defaults otherwise: noticing a
    // silent daemon is up to the daemon's own session settings.
    let cluster = try PrivateCluster()
    defer { cluster.stop() }
    let hba = cluster.directory + "/data/pg_hba.conf"
    try (try String(contentsOfFile: hba, encoding: .utf8) + "\nhost all all 169.254.0.0/16 trust\n")
      .write(toFile: hba, atomically: true, encoding: .utf8)
    let admin = try PGConnection(conninfo: cluster.url)
    try admin.simpleQuery("ALTER SYSTEM SET listen_addresses = '127.0.0.1, \(Self.serverAddress)'")
    try admin.simpleQuery("CREATE DATABASE soak")
    admin.close()
    try cluster.restart()
    let url = try TestCluster.databaseURL(cluster.url, "soak")
    let port = URLComponents(string: url)?.port ?? 0
    var db = try TestDatabase(url: url)
    try ExamplesTests.load(db)
    let receiver = try WebhookReceiver(host: Self.serverAddress)
    try db.sql(
      """
      INSERT INTO sluice.actor_roles (actor, role)
        SELECT 'p' || g, 'player' FROM generate_series(0, 11) g
        UNION ALL SELECT 'c' || g, 'customer' FROM generate_series(0, 3) g
        UNION ALL VALUES ('staff', 'staff');
      INSERT INTO shop.products VALUES ('plenty', 'Plenty', 1000000000, 100), ('scarce', 'Scarce', 20, 100);
      -- Every source row as it was written: retention deletes the rows, the recount needs them.
      CREATE TABLE public.soak_copy (
        source text, id text, doc jsonb NOT NULL, xid xid8 DEFAULT pg_current_xact_id(),
        lsn pg_lsn DEFAULT pg_current_wal_insert_lsn(), at timestamptz DEFAULT clock_timestamp(),
        PRIMARY KEY (source, id));
      CREATE FUNCTION public.soak_copy() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        INSERT INTO public.soak_copy (source, id, doc)
          VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, NEW.id::text, to_jsonb(NEW));
        RETURN NULL;
      END $$;
      CREATE TRIGGER soak_copy AFTER INSERT ON game.actions FOR EACH ROW EXECUTE FUNCTION public.soak_copy();
      CREATE TRIGGER soak_copy AFTER INSERT ON shop.orders FOR EACH ROW EXECUTE FUNCTION public.soak_copy();
      CREATE TRIGGER soak_copy AFTER INSERT ON shop.restocks FOR EACH ROW EXECUTE FUNCTION public.soak_copy();
      -- Poison: a handler that kills its own backend, one that hangs past the timeout.
      CREATE FUNCTION game.poison_kill(e jsonb) RETURNS void LANGUAGE sql
        AS $$ SELECT pg_terminate_backend(pg_backend_pid()) $$;
      CREATE FUNCTION game.poison_hang(e jsonb) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(3600) $$;
      INSERT INTO sluice.handlers (event_type, function)
        VALUES ('poison_kill', 'game.poison_kill'), ('poison_hang', 'game.poison_hang');
      INSERT INTO sluice.permission_rules (event_type, role)
        VALUES ('poison_kill', 'anyone'), ('poison_hang', 'anyone'), ('notify', 'player');
      -- Webhooks to a receiver that fails 20% of attempts and hangs 5% past the timeout.
      INSERT INTO sluice.endpoints (name, url, timeout_ms, max_in_flight)
        VALUES ('hook', '\(receiver.url("/chaos/20/3000/\(seed)"))', 1000, 16);
      SELECT sluice.add_webhook('notify', 'hook');
      -- Retention of the action rows.
      UPDATE sluice.sources SET retain = '5 seconds' WHERE relation IN ('game.actions', 'shop.orders');
      GRANT DELETE ON game.actions, shop.orders TO sluice_daemon;
      """)
    let environment = [
      "SLUICE_DATABASE_URL": "postgresql://sluice_daemon@\(Self.serverAddress):\(port)/soak", "SLUICE_SLOT": "soak",
      "SLUICE_METRICS_ADDR": "off", "SLUICE_OUTCOMES": "on", "SLUICE_RETENTION_INTERVAL_S": "2",
      "SLUICE_HANDLER_TIMEOUT_MS": "1000", "SLUICE_BATCH_SIZE": "200",
      "SLUICE_OUTBOX_BACKOFF_MS": "100", "SLUICE_OUTBOX_MAX_ATTEMPTS": "40",
    ]
    let binary = TestCluster.binDirectory.appendingPathComponent("sluice-examples").path
    func start(_ node: Node) throws -> ChildProcess {
      try ChildProcess(Self.ip, ["netns", "exec", node.namespace, binary, "run"], environment: environment)
    }
    var daemons = try nodes.map(start)
    #expect(
      try eventually(60, "a daemon to stream: \(daemons.map { $0.standardError.suffix(500) })") {
        daemons.contains { $0.standardError.contains("info streaming") }
      })
    var peakRSS = 0.0
    func restart(_ index: Int) throws {
      peakRSS = max(peakRSS, Self.peakRSS(daemons[index]))
      log("daemon-\(index).log", daemons[index].standardError + "---- restarted \(Date())\n")
      daemons[index] = try start(nodes[index])
    }
    /// Which node's daemon streams the slot now (by its walsender's address), if any.
    func active() -> Int? {
      let address = try? db.scalar(
        """
        SELECT host(client_addr) FROM pg_stat_activity
        WHERE pid = (SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'soak')
        """)
      return nodes.firstIndex { $0.daemonAddress == address }
    }

    // Writers: each its own connection and its own users, through every fault.
    let stop = StopSignal()
    let written = Atomic<Int>(0)
    let writersDone = Atomic<Int>(0)
    let writers = (0..<4).map { writer in
      Thread { [url] in
        var random = SeededGenerator(seed: seed &+ UInt64(writer) &+ 1)
        var connection: PGConnection?
        var awards: [String: [String]] = [:]
        var counter = 0
        while !stop.isSet {
          do {
            if connection == nil || !(connection!.isHealthy) { connection = try PGConnection(conninfo: url) }
            counter += 1
            let id = String(format: "%08x-0000-4000-8000-%012d", writer, counter)
            let user = "p\(writer * 3 + Int.random(in: 0..<3, using: &random))"
            switch Int.random(in: 0..<20, using: &random) {
            case 0..<8:
              // Awards; one in four with a dedupe key shared across this user's devices.
              let key = Int.random(in: 0..<4, using: &random) == 0 ? "daily-\(counter % 40)" : nil
              try connection!.query(
                "INSERT INTO game.actions (id, user_id, type, payload, dedupe_key) VALUES ($1, $2, 'award_xp', $3::jsonb, $4)",
                [id, user, "{\"xp\": \(Int.random(in: 1...500, using: &random))}", key])
              awards[user, default: []].append(id)
            case 8..<10:
              // Undo one of this user's awards; now and then one already undone.
              guard var list = awards[user], !list.isEmpty else { continue }
              let index = Int.random(in: 0..<list.count, using: &random)
              let target = Int.random(in: 0..<10, using: &random) == 0 ? list[index] : list.remove(at: index)
              awards[user] = list
              try connection!.query(
                "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, $2, 'undo', $3::jsonb)",
                [id, user, "{\"action_id\": \"\(target)\"}"])
            case 10 where counter % 2 == 0:
              // An actor without the player role: denied.
              try connection!.query(
                "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, $2, 'award_xp', '{\"xp\": 9}')",
                [id, "nobody\(writer)"])
            case 10:
              // A poison row: a dedupe key over the limit. Rejected, and it stops nothing.
              let long = String(repeating: "k", count: 1025 + Int.random(in: 0..<3000, using: &random))
              try connection!.query(
                "INSERT INTO game.actions (id, user_id, type, payload, dedupe_key) VALUES ($1, $2, 'award_xp', '{\"xp\": 9}', $3)",
                [id, user, long])
            case 11..<13:
              try connection!.query(
                "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, $2, 'notify', $3::jsonb)",
                [id, user, "{\"n\": \(counter)}"])
            case 13..<18:
              try connection!.query(
                "INSERT INTO shop.orders (id, customer_id, product_id, quantity) VALUES ($1, $2, $3, $4)",
                [
                  id, "c\(writer)", Bool.random(using: &random) ? "plenty" : "scarce",
                  String(Int.random(in: 1...3, using: &random)),
                ])
            default:
              try connection!.query(
                "INSERT INTO shop.restocks (id, staff_id, product_id, quantity) VALUES ($1, 'staff', $2, $3)",
                [id, Bool.random(using: &random) ? "plenty" : "scarce", String(Int.random(in: 1...5, using: &random))])
            }
            written.add(1, ordering: .relaxed)
            usleep(20_000)  // a steady load (about 50 writes/s per writer), not a flood
          } catch {
            // Postgres restarting: the row may or may not have committed; the recount reads what did.
            connection = nil
            usleep(50_000)
          }
        }
        writersDone.add(1, ordering: .releasing)
      }
    }
    writers.forEach { $0.start() }

    var faults: [Fault: Int] = [:]
    var recoveries: [Fault: [Double]] = [:]
    // A fault that comes while a poison event is still being retried waits for
    // those retries too (the stream keeps commit order): its recovery is
    // printed apart and not held to 10 s.
    var behindPoison: [Double] = []
    var poisonIDs: [String] = []
    var poison = 0
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      usleep(UInt32(Int.random(in: 500...2_500, using: &random)) * 1000)
      var fault = Fault.allCases.randomElement(using: &random)!
      // Poison is costly to retry: one fault in a hundred or so. The first two faults are one poison event of each kind.
      if fault == .poisonKill || fault == .poisonHang, Int.random(in: 0..<10, using: &random) != 0 {
        fault = .sigkillStandby
      }
      if poison < 2 { fault = poison == 0 ? .poisonKill : .poisonHang }
      let streaming = active()
      let before = (try? XPFixture.ledgerCount(db)) ?? 0
      let retrying = poisonIDs.isEmpty ? 0 : (try? Self.undecided(poisonIDs, db)) ?? 0
      let started = Date()
      log(
        "faults.log",
        "\(started) \(fault.rawValue); streaming: node \(streaming.map(String.init) ?? "none"); poison events retried: \(retrying)\n"
      )
      switch fault {
      case .sigkillActive, .sigtermActive, .sigkillStandby, .sigtermStandby:
        let wantActive = fault == .sigkillActive || fault == .sigtermActive
        let index = wantActive ? (streaming ?? 0) : 1 - (streaming ?? 1)
        let kill = fault == .sigkillActive || fault == .sigkillStandby
        peakRSS = max(peakRSS, Self.peakRSS(daemons[index]))
        daemons[index].signal(kill ? SIGKILL : SIGTERM)
        let status = daemons[index].waitForExit(seconds: 15)
        // A stop exits 0, also when another fault cut its connection meanwhile.
        if !kill {
          #expect(
            status == 0,
            "SIGTERM exit \(status.map(String.init) ?? "none"): \(Self.crashOrTail(daemons[index].standardError))")
        }
        try restart(index)
      case .restartPostgres:
        try cluster.restart()
        db = try TestDatabase(url: url)
      case .killWalsender:
        _ = try? db.sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'soak'")
      case .killHandlerBackend:
        _ = try? db.sql(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'sluice_daemon' AND application_name = 'sluice' AND backend_type = 'client backend'"
        )
      case .partition:
        guard let cut = streaming else { continue }
        try Self.ip("link", "set", nodes[cut].hostSide, "down")
        // Healed once the other daemon streams (recovery counts the ledger moving, below).
        _ = try eventually(60, "the standby to take over from a partitioned daemon") { active() == 1 - cut }
        try Self.ip("link", "set", nodes[cut].hostSide, "up")
      case .poisonKill, .poisonHang:
        poison += 1
        let id = UUID().uuidString.lowercased()
        poisonIDs.append(id)
        try db.sql(
          "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, 'p0', $2, '{}')",
          [id, fault == .poisonKill ? "poison_kill" : "poison_hang"])
      }
      faults[fault, default: 0] += 1
      // Recovered once the ledger moves past where it was (the writers keep it fed).
      if try eventually(60, "recovery from \(fault.rawValue)", { ((try? XPFixture.ledgerCount(db)) ?? 0) > before }) {
        let took = Date().timeIntervalSince(started)
        log("faults.log", "\(Date()) recovered in \(String(format: "%.1f", took)) s\n")
        if retrying > 0 { behindPoison.append(took) } else { recoveries[fault, default: []].append(took) }
      }
    }
    stop.set()
    #expect(try eventually(20, "the writers to stop") { writersDone.load(ordering: .acquiring) == writers.count })

    let total = Int(try db.scalar("SELECT count(*) FROM public.soak_copy") ?? "") ?? -1
    #expect(
      try eventually(180, "the ledger to catch up with \(total) source rows") {
        try XPFixture.ledgerCount(db) >= total
      })
    #expect(
      try eventually(180, "every webhook delivery to be final") {
        try db.scalar("SELECT count(*) FROM sluice.outbox WHERE status = 'pending'") == "0"
      })
    // What the slot and the ledger say of the rows without a ledger row (none, when all is well).
    let missing = try db.sql(
      """
      SELECT c.source, c.id, c.doc->>'type', c.xid::text, c.lsn::text, c.at::text FROM public.soak_copy c
        LEFT JOIN sluice.event_log l ON l.source = c.source AND l.event_id = c.id
      WHERE l.event_id IS NULL ORDER BY c.lsn LIMIT 50
      """
    ).rows
    if !missing.isEmpty {
      let state = try db.sql(
        """
        SELECT 'slot', active_pid::text, restart_lsn::text, confirmed_flush_lsn::text FROM pg_replication_slots
        UNION ALL SELECT 'stream_state', live::text, processed_lsn::text, ledger_high_water::text FROM sluice.stream_state
        UNION ALL SELECT 'ledger before the first', max(commit_lsn)::text, count(*)::text, NULL FROM sluice.event_log
          WHERE commit_lsn < $1::pg_lsn
        UNION ALL SELECT 'ledger after the first', min(commit_lsn)::text, count(*)::text, NULL FROM sluice.event_log
          WHERE commit_lsn >= $1::pg_lsn
        """, [missing[0][4]]
      ).rows
      log(
        "missing.txt",
        (missing + state).map { $0.map { $0 ?? "NULL" }.joined(separator: " | ") }.joined(separator: "\n"))
      print("soak: rows without a ledger row: \(missing.prefix(10)); state: \(state)")
    }
    for (index, daemon) in daemons.enumerated() {
      peakRSS = max(peakRSS, Self.peakRSS(daemon))
      daemon.signal(SIGTERM)
      #expect(daemon.waitForExit(seconds: 30) == 0, "\(daemon.standardError.suffix(2000))")
      log("daemon-\(index).log", daemon.standardError)
    }
    try? FileManager.default.copyItem(atPath: cluster.directory + "/server.log", toPath: logs + "/server.log")

    // The recount: hash joins over the copies and the ledger, linear in the events.
    func count(_ sql: String) throws -> Int { Int(try db.scalar(sql) ?? "") ?? -1 }
    let ledger = "sluice.event_log l ON l.source = c.source AND l.event_id = c.id"
    let lost = try count("SELECT count(*) FROM public.soak_copy c LEFT JOIN \(ledger) WHERE l.event_id IS NULL")
    #expect(lost == 0, "source rows without their ledger row")
    #expect(try XPFixture.ledgerCount(db) == total, "one ledger row per source row, and no other")
    // Every poison event dead, and no other.
    let poisonAlive = try count(
      "SELECT count(*) FROM public.soak_copy c JOIN \(ledger) WHERE c.doc->>'type' LIKE 'poison%' AND l.status <> 'dead'"
    )
    #expect(poisonAlive == 0)
    let deadOthers = try db.sql(
      "SELECT event_id, event_type, reason FROM sluice.event_log WHERE status = 'dead' AND event_type NOT LIKE 'poison%'"
    ).rows
    #expect(deadOthers.isEmpty, "events dead that are not poison: \(deadOthers)")
    // The verdicts: no role, denied; per (user, dedupe key) exactly one allowed award owns it.
    #expect(
      try count(
        "SELECT count(*) FROM public.soak_copy c JOIN \(ledger) WHERE c.doc->>'user_id' LIKE 'nobody%' AND l.status <> 'denied'"
      ) == 0)
    #expect(
      try count(
        """
        SELECT count(*) FROM (
          SELECT c.doc->>'user_id', c.doc->>'dedupe_key', count(*) FILTER (WHERE l.status <> 'duplicate') AS owners
          FROM public.soak_copy c JOIN \(ledger)
          WHERE c.doc->>'dedupe_key' IS NOT NULL AND octet_length(c.doc->>'dedupe_key') <= 1024
            AND l.status <> 'denied' GROUP BY 1, 2) k
        WHERE owners <> 1
        """) == 0, "a dedupe key owned by other than one event")
    // XP: the applied awards, less those an applied undo names.
    let xpMismatches = try count(
      """
      WITH awards AS (
        SELECT c.id, c.doc->>'user_id' AS user_id, (c.doc->'payload'->>'xp')::bigint AS xp
        FROM public.soak_copy c JOIN \(ledger)
        WHERE c.source = 'game.actions' AND c.doc->>'type' = 'award_xp' AND l.status = 'applied'),
      undone AS (
        SELECT DISTINCT c.doc->'payload'->>'action_id' AS id
        FROM public.soak_copy c JOIN \(ledger)
        WHERE c.source = 'game.actions' AND c.doc->>'type' = 'undo' AND l.status = 'applied'),
      model AS (
        SELECT a.user_id, sum(a.xp) FILTER (WHERE u.id IS NULL) AS xp
        FROM awards a LEFT JOIN undone u ON u.id = a.id GROUP BY a.user_id)
      SELECT count(*) FROM model m FULL JOIN game.user_xp x USING (user_id)
      WHERE coalesce(m.xp, 0) IS DISTINCT FROM coalesce(x.xp, 0)
      """)
    #expect(xpMismatches == 0, "XP differs from the recount for \(xpMismatches) users")
    let doubled = try count(
      """
      SELECT (SELECT count(*) FROM game.xp_awards)
             - (SELECT count(*) FROM sluice.event_log WHERE event_type = 'award_xp' AND status = 'applied')
      """)
    #expect(doubled == 0, "award effects differ from applied awards by \(doubled)")
    let undoneTwice = try count(
      """
      SELECT count(*) FROM (SELECT c.doc->'payload'->>'action_id' FROM public.soak_copy c JOIN \(ledger)
                            WHERE c.doc->>'type' = 'undo' AND l.status = 'applied' GROUP BY 1 HAVING count(*) > 1) u
      """)
    #expect(undoneTwice == 0, "an award undone twice")
    // Stock: the start, plus the restocks, less the placed orders.
    let stock = try db.sql(
      """
      WITH restocked AS (
        SELECT c.doc->>'product_id' AS id, sum((c.doc->>'quantity')::int) AS n FROM public.soak_copy c JOIN \(ledger)
        WHERE c.source = 'shop.restocks' AND l.status = 'applied' GROUP BY 1),
      placed AS (
        SELECT c.doc->>'product_id' AS id, sum((c.doc->>'quantity')::int) AS n FROM public.soak_copy c
        JOIN shop.order_status s ON s.order_id::text = c.id
        WHERE c.source = 'shop.orders' AND s.status = 'placed' GROUP BY 1)
      SELECT p.id, p.stock, (CASE p.id WHEN 'plenty' THEN 1000000000 ELSE 20 END)
                            + coalesce(r.n, 0) - coalesce(o.n, 0)
      FROM shop.products p LEFT JOIN restocked r USING (id) LEFT JOIN placed o USING (id) ORDER BY p.id
      """
    ).rows
    for row in stock {
      #expect(row[1] == row[2], "stock of \(row[0] ?? "?") is \(row[1] ?? "?"), the recount says \(row[2] ?? "?")")
    }
    let ordersWithoutStatus = try count(
      """
      SELECT count(*) FROM public.soak_copy c JOIN \(ledger) LEFT JOIN shop.order_status s ON s.order_id::text = c.id
      WHERE c.source = 'shop.orders' AND l.status = 'applied' AND s.order_id IS NULL
      """)
    #expect(ordersWithoutStatus == 0)
    // Webhooks: one delivery per applied notify, each delivered, and the receiver got exactly those keys.
    let notified = try count("SELECT count(*) FROM sluice.event_log WHERE event_type = 'notify' AND status = 'applied'")
    let keys = Set(
      try db.sql("SELECT idempotency_key FROM sluice.outbox WHERE status = 'delivered'").rows.compactMap { $0[0] })
    #expect(try count("SELECT count(*) FROM sluice.outbox") == notified, "one delivery per applied notify")
    #expect(keys.count == notified, "every delivery delivered")
    let requests = receiver.requests
    let answered = Set(requests.filter { (200..<300).contains($0.status) }.map(\.id))
    #expect(keys.subtracting(answered).isEmpty, "delivered keys the receiver never answered 2xx")
    let allKeys = Set(try db.sql("SELECT idempotency_key FROM sluice.outbox").rows.compactMap { $0[0] })
    #expect(Set(requests.map(\.id)).subtracting(allKeys).isEmpty, "requests with a key that is not a delivery")
    // Retention deleted only rows of final events, and did delete.
    let deletedRows = try count(
      """
      SELECT count(*) FROM public.soak_copy c
      LEFT JOIN game.actions a ON c.source = 'game.actions' AND a.id::text = c.id
      LEFT JOIN shop.orders o ON c.source = 'shop.orders' AND o.id::text = c.id
      WHERE c.source IN ('game.actions', 'shop.orders') AND a.id IS NULL AND o.id IS NULL
      """)
    let deletedNotFinal = try count(
      """
      SELECT count(*) FROM public.soak_copy c JOIN \(ledger)
      LEFT JOIN game.actions a ON c.source = 'game.actions' AND a.id::text = c.id
      LEFT JOIN shop.orders o ON c.source = 'shop.orders' AND o.id::text = c.id
      WHERE c.source IN ('game.actions', 'shop.orders') AND a.id IS NULL AND o.id IS NULL
        AND l.status NOT IN ('applied', 'rejected', 'denied', 'duplicate')
      """)
    #expect(deletedNotFinal == 0, "retention deleted rows of events that were not final")
    #expect(deletedRows > 0, "retention deleted nothing")
    // Outcomes: one per event with an actor, with the ledger's status.
    let outcomeMismatches = try count(
      """
      SELECT count(*) FROM sluice.event_log l FULL JOIN sluice.outcomes o USING (source, event_id)
      WHERE (l.actor <> '' OR o.event_id IS NOT NULL) AND o.status IS DISTINCT FROM l.status
      """)
    #expect(outcomeMismatches == 0, "outcomes differ from the ledger")
    let poisonRows = try count(
      "SELECT count(*) FROM sluice.event_log WHERE status = 'rejected' AND reason LIKE '% bytes long; the limit is 1024'"
    )
    #expect(poisonRows > 0 || seconds < 60, "the mix had rows over the limits")

    let survived = faults.values.reduce(0, +)
    let longest = recoveries.flatMap { $0.value }.max() ?? 0
    let longestByKind = Fault.allCases.compactMap { fault in
      recoveries[fault].flatMap { $0.max() }.map { "\(fault.rawValue) \(String(format: "%.1f", $0)) s" }
    }.joined(separator: ", ")
    let faultList = Fault.allCases.map { "\($0.rawValue) \(faults[$0] ?? 0)" }.joined(separator: ", ")
    print(
      """
      soak: \(String(format: "%.0f", seconds)) s, seed \(seed)
      soak: faults survived \(survived): \(faultList)
      soak: events \(total), writes \(written.load(ordering: .relaxed)), poison events \(poison), rows over the limits rejected \(poisonRows), webhook deliveries \(notified) (\(requests.count) attempts), source rows deleted by retention \(deletedRows)
      soak: lost \(lost), doubled \(doubled), XP mismatches \(xpMismatches), outcome mismatches \(outcomeMismatches)
      soak: longest recovery \(String(format: "%.1f", longest)) s; by fault: \(longestByKind)
      soak: faults that came while a poison event was retried: \(behindPoison.count), longest recovery \(String(format: "%.1f", behindPoison.max() ?? 0)) s (its retries included)
      soak: peak RSS of a daemon \(String(format: "%.1f", peakRSS)) MiB
      """)
    // Recovery within 10 s of every fault, a silent partition included (SPEC 6).
    #expect(longest <= 10, "a recovery took \(longest) s: \(longestByKind)")
    if lost == 0, doubled == 0, missing.isEmpty, longest <= 10 {
      try? FileManager.default.removeItem(atPath: logs)
    } else {
      print("soak: daemon logs, the faults' timeline and the server's log are in \(logs)")
    }
  }
}
