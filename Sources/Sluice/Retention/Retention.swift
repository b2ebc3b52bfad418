import SluiceCore
import SluicePostgres

/// SPEC section 10: a source's rows are deleted once their events are
/// final. Only rows whose ledger status is applied, rejected, denied or
/// duplicate (never dead), committed longer ago than the source's `retain`,
/// at or before the slot's confirmed position; in transactions of at most
/// 1,000 rows. The ledger keeps its rows, so a deleted id inserted again is
/// still a replay and dedupe keys stay owned.
///
/// Each source's ledger rows are walked in commit order (index
/// `event_log_commit_order`) from where the last pass stopped
/// (`sluice.retention_state`): a pass reads only what it deletes. The walk
/// stops at the first event younger than `retain` or beyond the slot's
/// confirmed position. Dead events it goes past are remembered
/// (`sluice.retention_held`) and their rows go once they are resolved.
/// Backfilled events (no commit LSN) are walked by processing time.
public enum Retention {
  /// A source with `retain` set, and what a pass needs to find its rows.
  struct Source {
    var relation: String
    /// The table's name quoted for SQL (`format('%I.%I')`: mixed case and dots survive).
    var table: String
    var idColumn: String
    /// The id column's type as SQL (`format_type`): ledger ids are cast back to it, so the delete uses its index.
    var idType: String
    var retain: String
    /// Why deleting its rows would change other tables (a cascading foreign key, a delete trigger): then none go.
    var refusal: String?
    /// A unique index on the id column alone: no two rows share an id, so the delete need not check.
    var idUnique = false
  }

  /// What one pass did (or, dry, would do) for a source.
  public struct Outcome: Sendable, Equatable {
    public var relation: String
    public var rows: Int
    /// How long the source's part of the pass took.
    public var seconds: Double = 0
    /// Why some rows could not be deleted (they stay; the walk went on).
    public var kept: String?
  }

  /// Rows per transaction (the SPEC allows up to 1,000): locks stay short,
  /// a busy source is not held up, and the walsender decodes each batch in
  /// a few milliseconds before the live events committed after it.
  static let batchRows = 250

  /// The sources with `retain` that this daemon's publication publishes (two
  /// daemons on two slots each retain their own sources, by their own slot).
  static func sources(_ connection: PGConnection, publication: String) throws -> [Source] {
    try connection.query(
      """
      SELECT s.relation, format('%I.%I', n.nspname, c.relname), s.id_column, format_type(a.atttypid, a.atttypmod),
             s.retain::text,
             CASE
               WHEN EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.confdeltype IN ('c', 'n', 'd')
                              AND f.confrelid IN (SELECT relid FROM pg_partition_tree(c.oid) UNION SELECT c.oid))
                 THEN 'a foreign key into it deletes or changes rows of another table (ON DELETE CASCADE, SET NULL or SET DEFAULT)'
               WHEN EXISTS (SELECT 1 FROM pg_trigger t WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND (t.tgtype & 8) <> 0
                              AND t.tgrelid IN (SELECT relid FROM pg_partition_tree(c.oid) UNION SELECT c.oid))
                 THEN 'a trigger runs on its deletes'
             END,
             EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indnkeyatts = 1
                       AND i.indkey[0] = a.attnum AND i.indpred IS NULL)
      FROM sluice.sources s
      JOIN pg_class c ON c.relkind IN ('r', 'p')
      JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname || '.' || c.relname = s.relation
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = s.id_column AND NOT a.attisdropped
      WHERE s.retain IS NOT NULL
        AND EXISTS (SELECT 1 FROM pg_publication_tables p
                    WHERE p.pubname = $1 AND p.schemaname = n.nspname AND p.tablename = c.relname)
      ORDER BY s.relation
      """, [publication]
    ).rows.compactMap { row in
      guard let relation = row[0], let table = row[1], let id = row[2], let type = row[3], let retain = row[4]
      else { return nil }
      return Source(
        relation: relation, table: table, idColumn: id, idType: type, retain: retain, refusal: row[5],
        idUnique: row[6] == "t")
    }
  }

  static let final = "('applied', 'rejected', 'denied', 'duplicate')"

  /// Backfilled events are walked by processing time, which is set when the
  /// ledger row is written, before its transaction commits: the walk keeps
  /// this far behind so that no backfill transaction still open is passed.
  static let backfillMargin = "5 minutes"

  /// The slot's confirmed position; nil when there is no slot (then nothing may go).
  static func confirmed(_ connection: PGConnection, slot: String) throws -> String? {
    try connection.query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", [slot])
      .scalar
  }

  /// Deletes the source rows of these ledger ids; returns (rows deleted,
  /// why some could not be). A digest or the daemon's own id names no row
  /// that can be found by its id. The id column's own equality finds the
  /// rows through its index; the text comparison keeps exactly the event's
  /// row (a numeric `1.0` is not `1.00`, nor citext `A` `a`). When the batch
  /// cannot be deleted (a foreign key into the source, no replica identity,
  /// an id that no longer casts to a retyped column), each row is tried
  /// alone, and the ones that fail are left in place: one row never stops
  /// the walk.
  static func delete(_ ids: [String], of source: Source, on connection: PGConnection) throws -> (Int, String?) {
    let ids = ids.filter { !$0.hasPrefix("sha256:") && !$0.hasPrefix("sluice:") }
    guard !ids.isEmpty else { return (0, nil) }
    let id = PGConnection.quoteIdentifier(source.idColumn)
    // Only a row that is alone with its id text: a second such row (a
    // replay's, another partition's, on a non-unique id column) is not an
    // event, so neither goes, and one id never matches more than one row.
    // A unique index on the id says so already (equal values, equal text).
    let alone =
      source.idUnique
      ? ""
      : """
      AND NOT EXISTS (SELECT 1 FROM \(source.table) o WHERE o.\(id) = s.\(id) AND o.\(id)::text = s.\(id)::text
                      AND (o.tableoid, o.ctid) <> (s.tableoid, s.ctid))
      """
    let sql = """
      DELETE FROM \(source.table) s
      WHERE s.\(id) = ANY (CAST($1::text[] AS \(source.idType)[])) AND s.\(id)::text = ANY ($1::text[])
      \(alone)
      """
    func attempt(_ ids: [String]) throws -> Int? {
      try connection.simpleQuery("SAVEPOINT sluice_retention")
      do {
        let deleted = try connection.query(sql, [PGArray.literal(ids)]).affectedRows
        try connection.simpleQuery("RELEASE SAVEPOINT sluice_retention")
        return deleted
      } catch let error as PostgresError where Self.rowStays(error) {
        try connection.simpleQuery("ROLLBACK TO SAVEPOINT sluice_retention")
        failure = failure ?? error.message
        return nil
      }
    }
    var failure: String?
    if let deleted = try attempt(ids) { return (deleted, nil) }
    var deleted = 0
    for one in ids { deleted += try attempt([one]) ?? 0 }
    return (deleted, failure)
  }

  /// Errors that are the row's own (a foreign key into it, a table with no
  /// replica identity for deletes, an id that no longer casts to a retyped
  /// column): the row stays and the walk goes on. Any other error (a lock
  /// held too long, a missing DELETE privilege, a cancel) rolls the batch
  /// back, and the walk stays where it was, to try again next pass.
  static func rowStays(_ error: PostgresError) -> Bool {
    guard let state = error.sqlState, !error.isConnectionLoss else { return false }
    return state == .foreignKeyViolation || state == .objectNotInPrerequisiteState || state.isDataException
  }

  /// One batch of a walk: in one transaction, the rows of the final events
  /// deleted, the dead ones held, the position saved. Returns (events walked, rows deleted).
  static func step(
    _ source: Source, confirmed: String, on connection: PGConnection, backfilled: Bool, failures: inout [String]
  ) throws -> (Int, Int) {
    // Where the walk stands (locked: one pass at a time per source, the daemon's or `compact`'s).
    guard
      let state = try connection.query(
        """
        SELECT through_lsn::text, through_event_id, through_processed_at::text, through_backfilled_id
        FROM sluice.retention_state WHERE source = $1 FOR UPDATE
        """, [source.relation]
      ).rows.first
    else { return (0, 0) }
    let rows: [[String?]]
    if backfilled {
      rows = try connection.query(
        """
        SELECT event_id, status, processed_at::text AS position, true FROM sluice.event_log
        WHERE source = $1 AND commit_lsn IS NULL AND (processed_at, event_id) > ($3::timestamptz, $4)
          AND processed_at < now() - $2::interval - interval '\(backfillMargin)'
        ORDER BY processed_at, event_id LIMIT \(batchRows)
        """, [source.relation, source.retain, state[2], state[3]]
      ).rows
    } else {
      rows = try connection.query(
        """
        SELECT event_id, status, commit_lsn::text AS position,
               coalesce(committed_at, processed_at) < now() - $2::interval
        FROM sluice.event_log
        WHERE source = $1 AND commit_lsn IS NOT NULL AND (commit_lsn, event_id) > ($4::pg_lsn, $5)
          AND commit_lsn <= $3::pg_lsn
        ORDER BY commit_lsn, event_id LIMIT \(batchRows)
        """, [source.relation, source.retain, confirmed, state[0], state[1]]
      ).rows
    }
    // Up to the first event too young (commit times follow commit order).
    let walked = rows.prefix { $0[3] == "t" }
    guard let last = walked.last, let lastID = last[0], let lastPosition = last[2] else { return (0, 0) }
    let finals = walked.filter { $0[1] != "dead" }.compactMap { $0[0] }
    let dead = walked.filter { $0[1] == "dead" }.compactMap { $0[0] }
    let (deleted, failure) = try delete(finals, of: source, on: connection)
    if let failure { failures.append(failure) }
    if !dead.isEmpty {
      try connection.query(
        """
        INSERT INTO sluice.retention_held (source, event_id) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING
        """, [source.relation, PGArray.literal(dead)])
    }
    try connection.query(
      backfilled
        ? "UPDATE sluice.retention_state SET through_processed_at = $2::timestamptz, through_backfilled_id = $3 WHERE source = $1"
        : "UPDATE sluice.retention_state SET through_lsn = $2::pg_lsn, through_event_id = $3 WHERE source = $1",
      [source.relation, lastPosition, lastID])
    return (walked.count, deleted)
  }

  /// Held dead events that are resolved now and old enough: their rows go,
  /// at most `batchRows` of them per call (the caller's transaction).
  /// Returns (events released, rows deleted).
  static func releaseHeld(_ source: Source, on connection: PGConnection, failures: inout [String]) throws -> (Int, Int)
  {
    let resolved = try connection.query(
      """
      WITH resolved AS (
        SELECT h.event_id FROM sluice.retention_held h
        JOIN sluice.event_log l ON l.source = h.source AND l.event_id = h.event_id
        WHERE h.source = $1 AND l.status IN \(final) AND coalesce(l.committed_at, l.processed_at) < now() - $2::interval
        ORDER BY h.event_id LIMIT \(batchRows))
      DELETE FROM sluice.retention_held h USING resolved r
      WHERE h.source = $1 AND h.event_id = r.event_id
      RETURNING h.event_id
      """, [source.relation, source.retain]
    ).rows.compactMap { $0[0] }
    let (deleted, failure) = try delete(resolved, of: source, on: connection)
    if let failure { failures.append(failure) }
    return (resolved.count, deleted)
  }

  /// The statement that notes replays (streamed events whose id the ledger
  /// holds already) of sources with `retain`, in the batch's transaction:
  /// `releaseReplays` deletes their rows later. Replays are rare; a source
  /// without `retain` notes none.
  static func noteReplays(_ events: [Event]) -> Statement? {
    let streamed = events.filter { $0.commitLSN != nil && $0.committedAt != nil }
    guard !streamed.isEmpty else { return nil }
    return Statement(
      sql: """
        INSERT INTO sluice.retention_replays (source, event_id, commit_lsn, committed_at)
        SELECT r.source, \(Ledger.ledgerID("r.id", "r.synthetic")), r.lsn::pg_lsn, r.at::timestamptz
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS r(source, id, synthetic, lsn, at)
        JOIN sluice.sources s ON s.relation = r.source AND s.retain IS NOT NULL
        ON CONFLICT DO NOTHING
        """,
      parameters: [
        PGArray.literal(streamed.map(\.source)), PGArray.literal(streamed.map(\.id)),
        PGArray.literal(streamed.map(Ledger.flag)), PGArray.literal(streamed.map { $0.commitLSN?.description }),
        PGArray.literal(streamed.map { $0.committedAt.map(PostgresTime.iso8601) }),
      ])
  }

  /// Noted replays whose `retain` has passed since their own commit, at or
  /// before the slot's confirmed position, whose event is final: their rows
  /// go, then their notes, at most `batchRows` per call (the caller's
  /// transaction). Returns (notes released, rows deleted).
  static func releaseReplays(
    _ source: Source, confirmed: String, on connection: PGConnection, failures: inout [String]
  ) throws -> (Int, Int) {
    let due = try connection.query(
      """
      WITH due AS (
        SELECT r.event_id, r.commit_lsn FROM sluice.retention_replays r
        JOIN sluice.event_log l ON l.source = r.source AND l.event_id = r.event_id
        WHERE r.source = $1 AND l.status IN \(final) AND r.committed_at < now() - $2::interval
          AND r.commit_lsn <= $3::pg_lsn
        ORDER BY r.committed_at LIMIT \(batchRows))
      DELETE FROM sluice.retention_replays r USING due d
      WHERE r.source = $1 AND r.event_id = d.event_id AND r.commit_lsn = d.commit_lsn
      RETURNING r.event_id
      """, [source.relation, source.retain, confirmed]
    ).rows.compactMap { $0[0] }
    let (deleted, failure) = try delete(Array(Set(due)), of: source, on: connection)
    if let failure { failures.append(failure) }
    return (due.count, deleted)
  }

  /// One pass over every source with `retain`: deletes the rows that may go.
  /// A dry run makes the same pass in one transaction and rolls it back, so
  /// it counts exactly what the pass would delete.
  /// `pace`: called after each batch with the rows and seconds so far, to slow down (the daemon's worker sleeps
  /// there, so that the WAL of its deletes never gets far ahead of the walsender decoding the live stream).
  public static func pass(
    _ connection: PGConnection, slot: String, publication: String, dryRun: Bool, stop: () -> Bool = { false },
    pace: (_ rows: Int, _ seconds: Double) -> Void = { _, _ in }
  ) throws -> [Outcome] {
    guard let confirmed = try confirmed(connection, slot: slot) else { return [] }
    if dryRun { try connection.simpleQuery("BEGIN") }
    defer { if dryRun { _ = try? connection.simpleQuery("ROLLBACK") } }
    func transaction<T>(_ body: () throws -> T) throws -> T {
      dryRun ? try body() : try Self.transaction(connection, body)
    }
    var outcomes: [Outcome] = []
    for source in try sources(connection, publication: publication) {
      let started = ContinuousClock.now
      if let refusal = source.refusal {
        outcomes.append(Outcome(relation: source.relation, rows: 0, kept: "nothing is deleted: \(refusal)"))
        continue
      }
      var failures: [String] = []
      var deleted = 0
      // One source's failure (a lock held too long, a missing privilege) stops its walk where it
      // stands, to be tried again next pass; the other sources go on.
      if dryRun { try connection.simpleQuery("SAVEPOINT sluice_source") }
      do {
        try connection.query(
          "INSERT INTO sluice.retention_state (source) VALUES ($1) ON CONFLICT DO NOTHING", [source.relation])
        while !stop() {
          let (released, rows) = try transaction { try releaseHeld(source, on: connection, failures: &failures) }
          deleted += rows
          if released < batchRows { break }
        }
        while !stop() {
          let (released, rows) = try transaction {
            try releaseReplays(source, confirmed: confirmed, on: connection, failures: &failures)
          }
          deleted += rows
          if released < batchRows { break }
        }
        for backfilled in [false, true] {
          while !stop() {
            let (walked, rows) = try transaction {
              try step(source, confirmed: confirmed, on: connection, backfilled: backfilled, failures: &failures)
            }
            deleted += rows
            if walked < batchRows { break }
            pace(deleted, started.duration(to: .now).inSeconds)
          }
        }
        if dryRun { try connection.simpleQuery("RELEASE SAVEPOINT sluice_source") }
      } catch let error as PostgresError where !error.isConnectionLoss && connection.isHealthy {
        if dryRun { try connection.simpleQuery("ROLLBACK TO SAVEPOINT sluice_source") }
        failures.insert("the walk stopped and tries again next pass: \(error.message)", at: 0)
        outcomes.append(
          Outcome(
            relation: source.relation, rows: deleted, seconds: started.duration(to: .now).inSeconds,
            kept: failures.first))
        continue
      }
      outcomes.append(
        Outcome(
          relation: source.relation, rows: deleted, seconds: started.duration(to: .now).inSeconds,
          kept: failures.first.map { "some rows could not be deleted and stay: \($0)" }))
    }
    return outcomes
  }

  /// `body` in a transaction of its own: committed, or rolled back if it throws.
  static func transaction<T>(_ connection: PGConnection, _ body: () throws -> T) throws -> T {
    try connection.simpleQuery("BEGIN")
    do {
      let result = try body()
      try connection.simpleQuery("COMMIT")
      return result
    } catch {
      _ = try? connection.simpleQuery("ROLLBACK")
      throw error
    }
  }

  /// For `status`: per source with `retain`, final events past its walk
  /// whose rows may go now (streamed ones; backfilled and held ones aside),
  /// and noted replays whose rows may go now.
  static func waiting(_ connection: PGConnection, slot: String, publication: String) throws -> [Outcome] {
    let confirmed = try confirmed(connection, slot: slot)
    return try sources(connection, publication: publication).map { source in
      guard let confirmed else { return Outcome(relation: source.relation, rows: 0) }
      let count = try connection.query(
        """
        SELECT count(*) FROM sluice.event_log l
        LEFT JOIN sluice.retention_state r ON r.source = l.source
        WHERE l.source = $1 AND l.commit_lsn IS NOT NULL AND l.status IN \(final)
          AND (l.commit_lsn, l.event_id) > (coalesce(r.through_lsn, '0/0'), coalesce(r.through_event_id, ''))
          AND l.commit_lsn <= $3::pg_lsn AND coalesce(l.committed_at, l.processed_at) < now() - $2::interval
        """, [source.relation, source.retain, confirmed]
      ).scalar
      // And replays' rows whose own retain has passed (their event final).
      let replays = try connection.query(
        """
        SELECT count(*) FROM sluice.retention_replays r
        JOIN sluice.event_log l ON l.source = r.source AND l.event_id = r.event_id
        WHERE r.source = $1 AND l.status IN \(final) AND r.committed_at < now() - $2::interval
          AND r.commit_lsn <= $3::pg_lsn
        """, [source.relation, source.retain, confirmed]
      ).scalar
      return Outcome(relation: source.relation, rows: (Int(count ?? "") ?? 0) + (Int(replays ?? "") ?? 0))
    }
  }
}

extension Operations {
  /// `sluice compact [--dry-run]`: one retention pass now.
  public func compact(dryRun: Bool) throws -> [Retention.Outcome] {
    let connection = try connect("sluice-compact")
    defer { connection.close() }
    // As the daemon's passes: a lock held elsewhere stops a source's walk (it says so), never the command.
    try connection.simpleQuery("SET lock_timeout = '5s'")
    var passes = try Retention.pass(
      connection, slot: configuration.slot, publication: configuration.publication, dryRun: dryRun)
    // Delivered webhooks (SPEC section 10), listed when some are old enough to go.
    let delivered =
      OutboxRetention.mayDelete(on: connection)
      ? try OutboxRetention.deleteDelivered(
        retentionSeconds: configuration.outboxRetentionSeconds, on: connection, dryRun: dryRun) : 0
    if delivered > 0 { passes.append(Retention.Outcome(relation: "sluice.outbox", rows: delivered)) }
    // Outcomes (SPEC section 12), listed when they are on or some are old enough to go.
    guard configuration.outcomes || Outcomes.mayTouch("DELETE", on: connection) else { return passes }
    let started = ContinuousClock.now
    do {
      let expired = try Outcomes.deleteExpired(
        retentionSeconds: configuration.outcomeRetentionSeconds, slot: configuration.slot, on: connection,
        dryRun: dryRun)
      if configuration.outcomes || expired > 0 {
        passes.append(
          Retention.Outcome(relation: "sluice.outcomes", rows: expired, seconds: started.duration(to: .now).inSeconds))
      }
    } catch let error as PostgresError where !error.isConnectionLoss && connection.isHealthy {
      // As for a source: the command reports it and the other parts stand.
      passes.append(
        Retention.Outcome(
          relation: "sluice.outcomes", rows: 0, seconds: started.duration(to: .now).inSeconds,
          kept: "the walk stopped and tries again next pass: \(error.message)"))
    }
    return passes
  }
}
