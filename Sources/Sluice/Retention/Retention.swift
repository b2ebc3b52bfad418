import SluiceCore
import SluicePostgres

/// SPEC section 10: a source's rows are deleted once their events are
/// final. Only rows whose ledger status is applied, rejected, denied or
/// duplicate (never dead), committed longer ago than the source's `retain`,
/// at or before the slot's confirmed position; in transactions of at most
/// 1,000 rows. The ledger keeps its rows (marked `retained`), so a deleted id
/// inserted again is still a replay and dedupe keys stay owned.
///
/// The partial index `event_log_retention` holds exactly the final events
/// not yet retained, by commit time: a pass reads only what it deletes.
public enum Retention {
  /// A source with `retain` set, and what a pass needs to find its rows.
  struct Source {
    var relation: String
    var idColumn: String
    /// The id column's type as SQL (`format_type`): ledger ids are cast back to it, so the delete uses its index.
    var idType: String
    var retain: String
  }

  /// What one pass did (or, dry, would do) for a source.
  public struct Outcome: Sendable, Equatable {
    public var relation: String
    public var rows: Int
  }

  /// Rows per transaction: locks stay short and a busy source is not held up.
  static let batchRows = 1000

  static func sources(_ connection: PGConnection) throws -> [Source] {
    try connection.query(
      """
      SELECT s.relation, s.id_column, format_type(a.atttypid, a.atttypmod), s.retain::text
      FROM sluice.sources s
      JOIN pg_attribute a ON a.attrelid = to_regclass(s.relation) AND a.attname = s.id_column AND NOT a.attisdropped
      WHERE s.retain IS NOT NULL ORDER BY s.relation
      """
    ).rows.compactMap { row in
      guard let relation = row[0], let id = row[1], let type = row[2], let retain = row[3] else { return nil }
      return Source(relation: relation, idColumn: id, idType: type, retain: retain)
    }
  }

  /// Ledger rows whose source rows may go now ($1 source, $2 retain, $3 the slot's confirmed position).
  static let eligible = """
    source = $1 AND status IN ('applied', 'rejected', 'denied', 'duplicate') AND NOT retained
      AND coalesce(committed_at, processed_at) < now() - $2::interval
      AND (commit_lsn IS NULL OR commit_lsn <= $3::pg_lsn)
    """

  /// Source rows of these ledger ids: a digest or the daemon's own id names no row that can be found by its id.
  static func rows(of source: Source, idsFrom subquery: String) -> String {
    """
    \(PGConnection.quoteQualified(source.relation)) WHERE \(PGConnection.quoteIdentifier(source.idColumn)) IN (
      SELECT CAST(event_id AS \(source.idType)) FROM (\(subquery)) ids
      WHERE NOT starts_with(event_id, 'sha256:') AND NOT starts_with(event_id, 'sluice:'))
    """
  }

  /// The slot's confirmed position; nil when there is no slot (then nothing may go).
  static func confirmed(_ connection: PGConnection, slot: String) throws -> String? {
    try connection.query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", [slot])
      .scalar
  }

  /// One pass over every source with `retain`: deletes (or, dry, counts) the rows that may go.
  public static func pass(
    _ connection: PGConnection, slot: String, dryRun: Bool, stop: () -> Bool = { false }
  ) throws -> [Outcome] {
    guard let confirmed = try confirmed(connection, slot: slot) else { return [] }
    var outcomes: [Outcome] = []
    for source in try sources(connection) {
      let parameters = [source.relation, source.retain, confirmed]
      if dryRun {
        let count = try connection.query(
          "SELECT count(*) FROM \(rows(of: source, idsFrom: "SELECT event_id FROM sluice.event_log WHERE \(eligible)"))",
          parameters
        ).scalar
        outcomes.append(Outcome(relation: source.relation, rows: Int(count ?? "") ?? 0))
        continue
      }
      var deleted = 0
      while !stop() {
        // One statement, one transaction: the batch's ledger rows are marked and its source rows deleted together.
        let row = try connection.query(
          """
          WITH batch AS (
            SELECT event_id FROM sluice.event_log WHERE \(eligible)
            ORDER BY coalesce(committed_at, processed_at) LIMIT \(batchRows) FOR UPDATE SKIP LOCKED),
          marked AS (
            UPDATE sluice.event_log l SET retained = true FROM batch b
            WHERE l.source = $1 AND l.event_id = b.event_id RETURNING l.event_id),
          deleted AS (DELETE FROM \(rows(of: source, idsFrom: "SELECT event_id FROM marked")) RETURNING 1)
          SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM deleted)
          """, parameters
        ).rows.first
        deleted += Int(row?[1] ?? "") ?? 0
        if (Int(row?[0] ?? "") ?? 0) < batchRows { break }
      }
      outcomes.append(Outcome(relation: source.relation, rows: deleted))
    }
    return outcomes
  }

  /// For `status`: per source with `retain`, the final events whose rows may go now.
  static func waiting(_ connection: PGConnection, slot: String) throws -> [Outcome] {
    let confirmed = try confirmed(connection, slot: slot)
    return try sources(connection).map { source in
      guard let confirmed else { return Outcome(relation: source.relation, rows: 0) }
      let count = try connection.query(
        "SELECT count(*) FROM sluice.event_log WHERE \(eligible)", [source.relation, source.retain, confirmed]
      ).scalar
      return Outcome(relation: source.relation, rows: Int(count ?? "") ?? 0)
    }
  }
}

extension Operations {
  /// `sluice compact [--dry-run]`: one retention pass now.
  public func compact(dryRun: Bool) throws -> [Retention.Outcome] {
    let connection = try connect("sluice-compact")
    defer { connection.close() }
    return try Retention.pass(connection, slot: configuration.slot, dryRun: dryRun)
  }
}
