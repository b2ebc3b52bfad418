import SluiceCore
import SluicePostgres

extension Operations {
  /// A webhook delivery as `sluice outbox list` shows it: never its URL or secret.
  public struct OutboxDelivery: Sendable {
    public var id: Int64
    public var endpoint: String
    public var status: String
    public var idempotencyKey: String
    public var eventType: String
    public var attempts: Int
    public var nextAttemptAt: String?
    public var lastStatus: Int?
    public var lastError: String?
    public var createdAt: String?
  }

  /// Pending and dead deliveries, dead first, each oldest first; at most `limit`.
  public func outboxDeliveries(limit: Int = 1000) throws -> [OutboxDelivery] {
    let connection = try connect("sluice-outbox")
    defer { connection.close() }
    return try connection.query(
      """
      (SELECT id, endpoint, status, idempotency_key, event_type, attempts, next_attempt_at::text, last_status,
              last_error, created_at::text
       FROM sluice.outbox WHERE status = 'dead' ORDER BY id LIMIT $1)
      UNION ALL
      (SELECT id, endpoint, status, idempotency_key, event_type, attempts, next_attempt_at::text, last_status,
              last_error, created_at::text
       FROM sluice.outbox WHERE status = 'pending' ORDER BY id LIMIT $1)
      LIMIT $1
      """, ["\(limit)"]
    ).rows.map { row in
      OutboxDelivery(
        id: Int64(row[0] ?? "") ?? 0, endpoint: row[1] ?? "", status: row[2] ?? "", idempotencyKey: row[3] ?? "",
        eventType: row[4] ?? "", attempts: Int(row[5] ?? "") ?? 0, nextAttemptAt: row[6],
        lastStatus: row[7].flatMap { Int($0) }, lastError: row[8], createdAt: row[9])
    }
  }

  /// Dead deliveries (one, or all) become pending again with their attempts
  /// reset, due now; a pending one is made due now. Returns how many.
  public func retryDeliveries(id: Int64?) throws -> Int {
    let connection = try connect("sluice-outbox")
    defer { connection.close() }
    let filter = id == nil ? "status = 'dead'" : "id = $1 AND status IN ('dead', 'pending')"
    let count = try connection.query(
      "UPDATE sluice.outbox SET status = 'pending', attempts = 0, next_attempt_at = now() WHERE \(filter)",
      id.map { ["\($0)"] } ?? []
    ).affectedRows
    try Self.notifyDeliverer(connection)
    return count
  }

  /// Gives up on a pending or dead delivery: its row is deleted. Returns how many.
  public func discardDelivery(id: Int64) throws -> Int {
    let connection = try connect("sluice-outbox")
    defer { connection.close() }
    return try connection.query("DELETE FROM sluice.outbox WHERE id = $1 AND status <> 'delivered'", ["\(id)"])
      .affectedRows
  }

  /// For `status`: pending and dead deliveries, the oldest pending one's
  /// age in seconds, and delivered ones past `SLUICE_OUTBOX_RETENTION`
  /// (waiting for the next retention pass).
  static func outboxSummary(_ connection: PGConnection, retentionSeconds: Int) throws -> StatusReport.Outbox {
    let row = try connection.query(
      """
      SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead'),
        extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))::float8,
        (SELECT count(*) FROM sluice.outbox
         WHERE status = 'delivered' AND delivered_at < now() - make_interval(secs => $1::float8))
      FROM sluice.outbox WHERE status IN ('pending', 'dead')
      """, [String(retentionSeconds)]
    ).rows.first
    return StatusReport.Outbox(
      pending: Int(row?[0] ?? "") ?? 0, dead: Int(row?[1] ?? "") ?? 0,
      oldestPendingSeconds: row?[2].flatMap { Double($0) }, deliveredPastRetention: Int(row?[3] ?? "") ?? 0)
  }
}

/// SPEC 10: delivered outbox rows go once `SLUICE_OUTBOX_RETENTION` has
/// passed since their delivery, oldest first, 1,000 a transaction (index
/// `outbox_delivered`). Pending and dead deliveries stay.
enum OutboxRetention {
  static let batchRows = 1000

  /// Whether this role may delete outbox rows (an install from before
  /// outbox retention may not have granted it: then nothing is deleted).
  static func mayDelete(on connection: PGConnection) -> Bool {
    (try? connection.query("SELECT has_table_privilege('sluice.outbox', 'DELETE')").scalar) == "t"
  }

  /// Deletes (or, dry, counts) them; `paced` is told after each batch how
  /// many rows went so far. Returns how many went.
  static func deleteDelivered(
    retentionSeconds: Int, on connection: PGConnection, dryRun: Bool, stop: () -> Bool = { false },
    paced: (Int) -> Void = { _ in }
  ) throws -> Int {
    let old = "status = 'delivered' AND delivered_at < now() - make_interval(secs => $1::float8)"
    if dryRun {
      return Int(
        try connection.query("SELECT count(*) FROM sluice.outbox WHERE \(old)", [String(retentionSeconds)]).scalar
          ?? "") ?? 0
    }
    var deleted = 0
    while !stop() {
      let batch = try connection.query(
        """
        DELETE FROM sluice.outbox WHERE id IN (
          SELECT id FROM sluice.outbox WHERE \(old) ORDER BY delivered_at LIMIT \(batchRows))
        """, [String(retentionSeconds)]
      ).affectedRows
      deleted += batch
      paced(deleted)
      if batch < batchRows { break }
    }
    return deleted
  }
}
