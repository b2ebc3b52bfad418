import Foundation
import Sluice
import Testing

/// Review: a delivery's body is at most 1 MiB. Rows of up to 16 MiB are
/// events, and the deliverer holds a body several times over while it is
/// sent: a client's large rows must become a rejected or dead event, never
/// a daemon that runs out of memory before it records an outcome.
@Suite struct WebhookBodyLimitTests {
  @Test func aBodyOverOneMiBIsNeverQueued() throws {
    let receiver = try WebhookReceiver()
    let db = try WebhookTests.setUp(
      "webhook_body_limit", receiver, endpoints: [("edge", "/ok")], webhooks: [("ping", "edge")])
    try XPFixture.handler(
      db, "big_emit", "BEGIN PERFORM sluice.emit('edge', jsonb_build_object('blob', repeat('a', 1100000))); END")
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "1"])
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES
        ('huge', 'ann', 'ping', jsonb_build_object('blob', repeat('a', 1100000))),
        ('sql', 'bob', 'big_emit', '{}'),
        ('small', 'cat', 'ping', '{"xp": 1}');
      """)
    #expect(
      try eventually(20, "the ledger") {
        try XPFixture.statuses(db) == ["huge": "rejected", "sql": "dead", "small": "applied"]
      })
    #expect(
      try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'huge'")?.contains(
        "over the 1 MiB limit of a webhook body") == true)
    #expect(
      try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'sql'")?.contains("over the limit of 1 MiB")
        == true)
    #expect(try eventually(20, "the small event's delivery") { receiver.requests.count >= 1 })
    #expect(try WebhookTests.outbox(db).map { $0[0] } == ["xp.actions/small/1"])
    #expect(receiver.requests.map(\.id) == ["xp.actions/small/1"])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }
}
