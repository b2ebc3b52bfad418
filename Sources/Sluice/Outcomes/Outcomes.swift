import SluicePostgres

/// SPEC section 12: `sluice.outcomes`, what became of each event, for the
/// actor who sent it. An outcome is written by the statement that writes
/// (or, for `dlq`, changes) the event's ledger row, so it commits with the
/// ledger row and the handler's writes or not at all; a replay writes no
/// ledger row and so no outcome. Migration 008 has the table and its
/// row-level security.
enum Outcomes {
  /// What a statement that writes ledger rows does to outcomes.
  enum Mode {
    /// `SLUICE_OUTCOMES=off`: nothing (the ledger statement as it is).
    case off
    /// Each ledger row with an actor gets its outcome (inserted, or replaced).
    case write
    /// Outcomes that exist follow their ledger rows, none is added
    /// (`dlq` with outcomes off: rows written while they were on stay true).
    case followExisting

    init(_ on: Bool, else otherwise: Mode = .off) { self = on ? .write : otherwise }
  }

  /// `ledgerWrite`, an INSERT or UPDATE of `sluice.event_log` without a
  /// RETURNING clause, extended to write the outcomes of the rows it
  /// writes. With `.off` it is returned as it is. Otherwise the statement
  /// returns the number of ledger rows written (its own row count would be
  /// the outcomes').
  static func with(_ ledgerWrite: String, _ mode: Mode) -> String {
    let written = """
      WITH l AS (
      \(ledgerWrite)
        RETURNING source, event_id, event_type, actor, status, sluice.outcome_reason(reason) AS reason, commit_lsn,
          processed_at)
      """
    switch mode {
    case .off:
      return ledgerWrite
    case .write:
      return """
        \(written), o AS (
          INSERT INTO sluice.outcomes AS o (source, event_id, actor, event_type, status, reason, commit_lsn, processed_at)
          SELECT source, event_id, actor, event_type, status, reason, commit_lsn, processed_at FROM l WHERE actor <> ''
          ON CONFLICT (source, event_id) DO UPDATE SET
            actor = EXCLUDED.actor, event_type = EXCLUDED.event_type, status = EXCLUDED.status,
            reason = EXCLUDED.reason, commit_lsn = EXCLUDED.commit_lsn, processed_at = EXCLUDED.processed_at)
        SELECT count(*) FROM l
        """
    case .followExisting:
      return """
        \(written), o AS (
          UPDATE sluice.outcomes o SET status = l.status, reason = l.reason, processed_at = l.processed_at
          FROM l WHERE o.source = l.source AND o.event_id = l.event_id)
        SELECT count(*) FROM l
        """
    }
  }

  // MARK: - Retention

  /// Rows per delete transaction, as for source rows (SPEC section 10).
  static let batchRows = 1000

  /// The condition of an outcome retention may delete: older than
  /// `retention` (seconds, `$1`) and final. A `dead` outcome stays until
  /// `dlq retry` or `discard` resolves it: its actor is still waiting.
  static let expired = "processed_at < now() - make_interval(secs => $1::int) AND status <> 'dead'"

  /// Deletes expired outcomes, oldest first, in transactions of at most
  /// `batchRows` (each commits on its own). `pace` is called after each
  /// with the rows deleted so far. A dry run counts them instead.
  static func deleteExpired(
    retentionSeconds: Int, on connection: PGConnection, dryRun: Bool, stop: () -> Bool = { false },
    pace: (_ rows: Int) -> Void = { _ in }
  ) throws -> Int {
    if dryRun { return try waiting(retentionSeconds: retentionSeconds, on: connection) }
    var deleted = 0
    while !stop() {
      // One statement is one transaction (autocommit): its lock is short.
      let rows = try connection.query(
        """
        DELETE FROM sluice.outcomes o USING (
          SELECT source, event_id FROM sluice.outcomes WHERE \(expired)
          ORDER BY processed_at LIMIT \(batchRows) FOR UPDATE SKIP LOCKED) old
        WHERE o.source = old.source AND o.event_id = old.event_id
        """, [String(retentionSeconds)]
      ).affectedRows
      deleted += rows
      if rows < batchRows { break }
      pace(deleted)
    }
    return deleted
  }

  /// How many outcomes retention would delete now.
  static func waiting(retentionSeconds: Int, on connection: PGConnection) throws -> Int {
    Int(
      try connection.query("SELECT count(*) FROM sluice.outcomes WHERE \(expired)", [String(retentionSeconds)]).scalar
        ?? "") ?? 0
  }

  // MARK: - Who can read them

  /// Why roles other than the daemon's own could read outcomes of other
  /// actors (`sluice check`): row-level security off, a policy other than
  /// migration 008's that lets someone see rows, or a role that can SELECT
  /// and bypasses row-level security (BYPASSRLS, or a member of the
  /// table's owner). Superusers and the owner itself are the
  /// administrators, not clients. A sync layer's own role is often such a
  /// role: then its rules must give each user only their own rows (README).
  static func readersOfOthers(on connection: PGConnection) throws -> [String] {
    var warnings: [String] = []
    let table = try connection.query(
      """
      SELECT c.relrowsecurity, pg_get_userbyid(c.relowner) FROM pg_class c
      WHERE c.oid = 'sluice.outcomes'::regclass
      """
    ).rows.first
    if table?[0] != "t" {
      warnings.append(
        "row-level security is off on sluice.outcomes: every role that can SELECT it reads every actor's outcomes")
    }
    for row in try connection.query(
      """
      SELECT policyname, array_to_string(roles, ', ') FROM pg_policies
      WHERE schemaname = 'sluice' AND tablename = 'outcomes' AND cmd IN ('SELECT', 'ALL')
        AND policyname NOT IN ('outcomes_own_actor', 'outcomes_daemon')
      ORDER BY policyname
      """
    ).rows {
      warnings.append(
        "policy \(row[0] ?? "") on sluice.outcomes lets \(row[1] ?? "") read rows: check that it keeps each actor to their own"
      )
    }
    for row in try connection.query(
      """
      SELECT r.rolname, CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' ELSE 'a member of the table''s owner' END
      FROM pg_roles r, pg_class c
      WHERE c.oid = 'sluice.outcomes'::regclass AND r.rolname NOT LIKE 'pg\\_%'
        AND NOT r.rolsuper AND r.oid <> c.relowner AND r.rolname <> current_user
        AND has_table_privilege(r.oid, c.oid, 'SELECT')
        AND (r.rolbypassrls OR pg_has_role(r.oid, c.relowner, 'USAGE'))
      ORDER BY r.rolname
      """
    ).rows {
      warnings.append(
        "role \(row[0] ?? "") can read every actor's outcomes (\(row[1] ?? "")): if it serves clients, they see each other's"
      )
    }
    return warnings
  }
}
