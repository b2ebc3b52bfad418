import Foundation
import Sluice
import SluiceExamples
import Testing

/// docs/handlers.md, kept true: it quotes
/// these files verbatim, and both kinds of handler run here for real.
@Suite(.serialized) struct AddHandlerTests {
  static let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
    "ReadmeExamples")

  @Test func readmeQuotesTheTestedExamples() throws {
    let readme = try String(
      contentsOf: ExamplesTests.repository.appendingPathComponent("docs/handlers.md"), encoding: .utf8)
    for file in ["AwardBadge.swift", "add_handler.sql"] {
      let text = try String(contentsOf: Self.examples.appendingPathComponent(file), encoding: .utf8)
      #expect(readme.contains(text), "docs/handlers.md must quote ReadmeExamples/\(file) verbatim")
    }
  }

  @Test func swiftHandlerRunsInADaemonOfYourOwn() throws {
    let db = try TestDatabase("addswift")
    try ExamplesTests.load(db)
    try db.sql(
      """
      CREATE TABLE game.badges (user_id text, badge text, PRIMARY KEY (user_id, badge));
      INSERT INTO sluice.permission_rules (event_type, role) VALUES ('award_badge', 'player');
      INSERT INTO sluice.actor_roles (actor, role) VALUES ('ann', 'player');
      """)
    let metricsPort = try freePort()
    var configuration = try Configuration(environment: [
      "SLUICE_DATABASE_URL": db.url, "SLUICE_METRICS_ADDR": "127.0.0.1:\(metricsPort)",
    ])
    configuration.slot = db.slot
    // What `sluice run` does first: the swift-metrics API records into /metrics.
    DaemonMetrics.bootstrapHandlerMetrics()
    let stop = StopSignal()
    // What `SluiceCLI.main(handlers: ExampleHandlers.all + [AwardBadge()])` runs.
    let daemon = Daemon(
      configuration: configuration, registry: HandlerRegistry(ExampleHandlers.all + [AwardBadge()]),
      logger: Logger(label: "test"), stop: stop)
    let finished = DispatchSemaphore(value: 0)
    nonisolated(unsafe) var failure: (any Error)?
    Thread {
      do { try daemon.run() } catch { failure = error }
      finished.signal()
    }.start()
    try db.sql(
      """
      INSERT INTO game.actions (id, user_id, type, payload) VALUES
        (gen_random_uuid(), 'ann', 'award_badge', '{"badge": "early-bird"}'),
        (gen_random_uuid(), 'ann', 'award_badge', '{"badge": ""}'),
        (gen_random_uuid(), 'ann', 'award_xp', '{"xp": 5}');
      """)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    // The handler's own counter is served beside Sluice's series (at least
    // once: a handler runs again when its batch is retried).
    // A batch sent ahead is counted once its result is read, just after its ledger rows show.
    var metrics = ""
    #expect(
      try eventually {
        metrics = try httpGet(port: metricsPort, path: "/metrics")
        return metrics.contains("sluice_events_total{") && metrics.contains("game_badges_awarded_total ")
      }, "\(metrics)")
    let awarded = metrics.split(separator: "\n").first { $0.hasPrefix("game_badges_awarded_total ") }
    #expect(awarded.flatMap { Int($0.split(separator: " ").last ?? "") }.map { $0 >= 1 } == true, "\(metrics)")
    stop.set()
    #expect(finished.wait(timeout: .now() + 10) == .success)
    #expect(failure == nil)
    #expect(try db.sql("SELECT user_id, badge FROM game.badges").rows == [["ann", "early-bird"]])
    #expect(
      try db.sql("SELECT event_type, status, reason FROM sluice.event_log ORDER BY status, event_type").rows == [
        ["award_badge", "applied", nil], ["award_xp", "applied", nil],
        ["award_badge", "rejected", "payload.badge must be a non-empty string"],
      ])
  }

  @Test func sqlHandlerNeedsNoRebuild() throws {
    let db = try TestDatabase("addsql")
    try ExamplesTests.load(db)
    try db.sql("INSERT INTO sluice.actor_roles (actor, role) VALUES ('ben', 'player')")
    // The daemon is already running when the handler is added: no restart, no rebuild.
    let daemon = try startDaemon(db)
    try db.sql(try String(contentsOf: Self.examples.appendingPathComponent("add_handler.sql"), encoding: .utf8))
    try db.sql(
      """
      INSERT INTO game.actions (id, user_id, type, payload) VALUES
        (gen_random_uuid(), 'ben', 'set_title', '{"title": "Night Owl"}'),
        (gen_random_uuid(), 'ben', 'set_title', '{"title": "The Most Tremendously Long Title Anyone Wrote"}'),
        (gen_random_uuid(), 'ben', 'set_title', '{}');
      """)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try db.sql("SELECT user_id, title FROM game.titles").rows == [["ben", "Night Owl"]])
    #expect(
      try db.sql("SELECT status, count(*) FROM sluice.event_log GROUP BY status ORDER BY status").rows == [
        ["applied", "1"], ["rejected", "2"],
      ])
  }
}
