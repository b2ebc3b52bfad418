import Foundation
import Sluice
import SluicePostgres
import Synchronization
import Testing

/// The fault soak: the game and shop examples under steady load from several
/// writers while faults are injected (seeded). Short in CI; `scripts/soak`
/// runs it long (SLUICE_SOAK_SECONDS).
@Suite(.serialized) struct SoakTests {
  enum Fault: String, CaseIterable {
    case sigkill = "SIGKILL daemon", sigterm = "SIGTERM daemon", restartPostgres = "restart Postgres"
    case killWalsender = "terminate walsender", killHandlerBackend = "terminate handler backend"
  }

  @Test func faultSoak() throws {
    let seconds = ProcessInfo.processInfo.environment["SLUICE_SOAK_SECONDS"].flatMap { Double($0) } ?? 20
    let seed = testSeed(default: 424_242)
    var random = SeededGenerator(seed: seed)
    let cluster = try PrivateCluster()
    defer { cluster.stop() }
    let admin = try PGConnection(conninfo: cluster.url)
    try admin.query("CREATE DATABASE soak")
    admin.close()
    let url = try TestCluster.databaseURL(cluster.url, "soak")
    var db = try TestDatabase(url: url)
    try ExamplesTests.load(db)
    try db.sql(
      """
      INSERT INTO sluice.actor_roles (actor, role)
        SELECT 'p' || g, 'player' FROM generate_series(0, 9) g
        UNION ALL SELECT 'c' || g, 'customer' FROM generate_series(0, 9) g
        UNION ALL VALUES ('staff', 'staff');
      INSERT INTO shop.products VALUES ('plenty', 'Plenty', 1000000, 100), ('scarce', 'Scarce', 20, 100);
      """)
    let daemonURL = url.replacingOccurrences(of: "//postgres@", with: "//sluice_daemon@")
    let environment = ["SLUICE_DATABASE_URL": daemonURL, "SLUICE_BATCH_SIZE": "200", "SLUICE_MAX_ATTEMPTS": "3"]
    var daemon = try startDaemon(db, environment, binary: "sluice-examples")

    // Writers: each its own connection and its own users, reconnecting through faults.
    let stop = StopSignal()
    let written = Atomic<Int>(0)
    let writersDone = Atomic<Int>(0)
    let writers = (0..<3).map { writer in
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
            switch Int.random(in: 0..<10, using: &random) {
            case 0 where Int.random(in: 0..<8, using: &random) == 0:
              // Poison: a dedupe key or a type over the limits, or a user id
              // over them. Each must be rejected and stop nothing.
              let long = String(repeating: "p", count: 1025 + Int.random(in: 0..<3000, using: &random))
              let (key, type, who): (String?, String, String) =
                switch Int.random(in: 0..<3, using: &random) {
                case 0: (long, "award_xp", user)
                case 1: (nil, long, user)
                default: (nil, "award_xp", long)
                }
              try connection!.query(
                "INSERT INTO game.actions (id, user_id, type, payload, dedupe_key) VALUES ($1, $2, $3, '{\"xp\": 1}', $4)",
                [id, who, type, key])
            case 0..<5:
              try connection!.query(
                "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, $2, 'award_xp', $3::jsonb)",
                [id, user, "{\"xp\": \(Int.random(in: 1...500, using: &random))}"])
              awards[user, default: []].append(id)
            case 5:
              // Undo one of this user's earlier awards, each at most once.
              guard var list = awards[user], !list.isEmpty else { continue }
              let target = list.remove(at: Int.random(in: 0..<list.count, using: &random))
              awards[user] = list
              try connection!.query(
                "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, $2, 'undo', $3::jsonb)",
                [id, user, "{\"action_id\": \"\(target)\"}"])
            case 6..<9:
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
            usleep(1_000)  // a steady load (~1,000 writes/s per writer), not a flood
          } catch {
            // Postgres restarting: the row may or may not have committed; the model reads what did.
            connection = nil
            usleep(50_000)
          }
        }
        writersDone.add(1, ordering: .releasing)
      }
    }
    writers.forEach { $0.start() }

    var faults: [Fault: Int] = [:]
    var recoveries: [Double] = []
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      usleep(UInt32(Int.random(in: 800...2_500, using: &random)) * 1000)
      let fault = Fault.allCases.randomElement(using: &random)!
      let before = try? XPFixture.ledgerCount(db)
      let started = Date()
      switch fault {
      case .sigkill, .sigterm:
        daemon.signal(fault == .sigkill ? SIGKILL : SIGTERM)
        let status = daemon.waitForExit(seconds: 10)
        if fault == .sigterm { #expect(status == 0, "SIGTERM exit: \(daemon.standardError.suffix(500))") }
        daemon = try startDaemon(db, environment, binary: "sluice-examples")
      case .restartPostgres:
        try cluster.restart()
        db = try TestDatabase(url: url)
      case .killWalsender:
        _ = try? db.sql(
          "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", [db.slot])
      case .killHandlerBackend:
        _ = try? db.sql(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'sluice_daemon' AND application_name = 'sluice' AND backend_type = 'client backend'"
        )
      }
      faults[fault, default: 0] += 1
      // Recovered once the ledger moves past where it was (the writers keep it fed).
      let baseline = before ?? 0
      if try eventually(60, "recovery from \(fault.rawValue)", { ((try? XPFixture.ledgerCount(db)) ?? 0) > baseline }) {
        recoveries.append(Date().timeIntervalSince(started))
      }
    }
    stop.set()
    #expect(try eventually(10, "the writers to stop") { writersDone.load(ordering: .acquiring) == writers.count })

    let sources = """
      (SELECT count(*) FROM game.actions) + (SELECT count(*) FROM shop.orders) + (SELECT count(*) FROM shop.restocks)
      """
    let total = Int(try db.scalar("SELECT \(sources)") ?? "") ?? -1
    #expect(
      try eventually(120, "the ledger to catch up with \(total) source rows") { try XPFixture.ledgerCount(db) >= total }
    )
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError.suffix(3000))")

    // Every source row has exactly one ledger row, and nothing else is in the ledger.
    let lost =
      Int(
        try db.scalar(
          """
          SELECT count(*) FROM (SELECT 'game.actions' s, id::text i FROM game.actions
            UNION ALL SELECT 'shop.orders', id::text FROM shop.orders
            UNION ALL SELECT 'shop.restocks', id::text FROM shop.restocks) src
          WHERE NOT EXISTS (SELECT 1 FROM sluice.event_log l WHERE l.source = src.s AND l.event_id = src.i)
          """) ?? "") ?? -1
    #expect(lost == 0)
    #expect(try XPFixture.ledgerCount(db) == total)
    // XP from the source rows alone: valid awards minus the awards their undos name.
    let xpMismatches =
      Int(
        try db.scalar(
          """
          WITH awards AS (SELECT id, user_id, (payload->>'xp')::int xp FROM game.actions WHERE type = 'award_xp'
                          AND octet_length(user_id) <= 1024 AND octet_length(coalesce(dedupe_key, '')) <= 1024),
          undone AS (SELECT a.id FROM game.actions u JOIN awards a ON a.id = (u.payload->>'action_id')::uuid
                     AND a.user_id = u.user_id WHERE u.type = 'undo'),
          model AS (SELECT a.user_id, sum(a.xp) FILTER (WHERE u.id IS NULL) xp
                    FROM awards a LEFT JOIN undone u USING (id) GROUP BY a.user_id)
          SELECT count(*) FROM model m FULL JOIN game.user_xp x USING (user_id) WHERE coalesce(m.xp, 0) IS DISTINCT FROM x.xp
          """) ?? "") ?? -1
    #expect(xpMismatches == 0, "XP differs from the model for \(xpMismatches) users")
    // Stock: 'plenty' never runs out, so its model is exact; 'scarce' must match its placed orders.
    let stock = try db.sql(
      """
      SELECT p.id, p.stock,
             (CASE p.id WHEN 'plenty' THEN 1000000 ELSE 20 END)
             + coalesce((SELECT sum(quantity) FROM shop.restocks r WHERE r.product_id = p.id), 0)
             - coalesce((SELECT sum(o.quantity) FROM shop.orders o JOIN shop.order_status s ON s.order_id = o.id
                         WHERE o.product_id = p.id AND s.status = 'placed'), 0)
      FROM shop.products p ORDER BY p.id
      """
    ).rows
    for row in stock {
      #expect(row[1] == row[2], "stock of \(row[0] ?? "?") is \(row[1] ?? "?"), model says \(row[2] ?? "?")")
      #expect((Int(row[1] ?? "") ?? -1) >= 0)
    }
    #expect(
      try db.scalar(
        "SELECT count(*) FROM shop.orders o WHERE product_id = 'plenty' AND NOT EXISTS (SELECT 1 FROM shop.order_status s WHERE s.order_id = o.id AND s.status = 'placed')"
      ) == "0")
    let duplicated =
      Int(
        try db.scalar(
          "SELECT (SELECT count(*) FROM game.xp_awards) - (SELECT count(*) FROM sluice.event_log WHERE event_type = 'award_xp' AND status = 'applied')"
        )
          ?? "") ?? -1
    #expect(duplicated == 0)
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'dead'") == "0")
    let poison = try db.scalar(
      "SELECT count(*) FROM sluice.event_log WHERE status = 'rejected' AND reason LIKE '% bytes long; the limit is 1024'"
    )
    #expect((Int(poison ?? "") ?? 0) > 0, "the mix had poison rows")

    let faultList = Fault.allCases.map { "\($0.rawValue) \(faults[$0] ?? 0)" }.joined(separator: ", ")
    print(
      """
      soak: \(String(format: "%.0f", seconds)) s, seed \(seed)
      soak: events \(total), writes \(written.load(ordering: .relaxed))
      soak: faults: \(faultList)
      soak: poison rows rejected \(poison ?? "?")
      soak: events lost \(lost), effects duplicated \(duplicated), max recovery \(String(format: "%.2f", recoveries.max() ?? 0)) s
      """)
  }
}
