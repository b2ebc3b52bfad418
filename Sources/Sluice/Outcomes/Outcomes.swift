import SluiceCore
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
    /// New ledger rows: each with an actor gets its outcome. No outcome can
    /// exist for a new ledger row (outcomes are only written with theirs,
    /// and a second writer of the same ledger row fails on the ledger's own
    /// key first), so a plain insert: an upsert costs half as much again
    /// (docs/outcomes.md, Cost). One that someone wrote
    /// by hand makes the statement fail as a ledger conflict; the batch then
    /// deletes such orphans (`deleteOrphans`) and goes again.
    case insert
    /// Changed ledger rows (`dlq`): each with an actor gets its outcome,
    /// inserted or replaced (retention may have deleted it), and retention
    /// is told to look at it again (its walk may be past the event).
    case upsert
    /// Outcomes that exist follow their ledger rows, none is added
    /// (`dlq` with outcomes off: rows written while they were on stay true).
    case followExisting
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
        RETURNING source, event_id, event_type, actor, status, commit_lsn, processed_at,
          -- Only a long reason pays for the function call (a SQL function that is not inlined).
          CASE WHEN coalesce(octet_length(reason), 0) <= 1024 THEN reason ELSE sluice.outcome_reason(reason) END AS reason)
      """
    switch mode {
    case .off:
      return ledgerWrite
    case .insert:
      return """
        \(written), o AS (
          INSERT INTO sluice.outcomes (source, event_id, actor, event_type, status, reason, commit_lsn, processed_at)
          SELECT source, event_id, actor, event_type, status, reason, commit_lsn, processed_at FROM l
          WHERE actor <> '')
        SELECT count(*) FROM l
        """
    case .upsert:
      return """
        \(written), o AS (
          INSERT INTO sluice.outcomes AS o (source, event_id, actor, event_type, status, reason, commit_lsn, processed_at)
          SELECT source, event_id, actor, event_type, status, reason, commit_lsn, processed_at FROM l WHERE actor <> ''
          ON CONFLICT (source, event_id) DO UPDATE SET
            actor = EXCLUDED.actor, event_type = EXCLUDED.event_type, status = EXCLUDED.status,
            reason = EXCLUDED.reason, commit_lsn = EXCLUDED.commit_lsn, processed_at = EXCLUDED.processed_at),
        -- Retention's walk may have passed this event: it must find the outcome again.
        h AS (
          INSERT INTO sluice.outcome_retention_held (source, event_id)
          SELECT source, event_id FROM l WHERE actor <> '' ON CONFLICT DO NOTHING)
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

  /// Deletes outcomes of these events that have no ledger row (written by
  /// hand: the daemon writes none): the events are about to get their own.
  static func deleteOrphans(_ events: [Event], on connection: PGConnection) throws {
    guard !events.isEmpty else { return }
    try connection.query(
      """
      DELETE FROM sluice.outcomes o
      USING unnest($1::text[], $2::text[], $3::bool[]) AS k(source, id, synthetic)
      WHERE o.source = k.source AND o.event_id = \(Ledger.ledgerID("k.id", "k.synthetic"))
        AND NOT EXISTS (SELECT 1 FROM sluice.event_log l WHERE l.source = o.source AND l.event_id = o.event_id)
      """,
      [
        PGArray.literal(events.map(\.source)), PGArray.literal(events.map(\.id)),
        PGArray.literal(events.map(Ledger.flag)),
      ])
  }

  // MARK: - Who can write and read them

  /// Why this session's role cannot write outcomes as the daemon does
  /// (insert, update and delete a row of its own, rolled back), or nil if
  /// it can. Row-level security must let it see what it writes: an update
  /// that finds nothing counts as a failure.
  static func cannotWrite(on connection: PGConnection) -> String? {
    let key = ["sluice.check", "probe-\(UInt64.random(in: 0...UInt64.max))"]
    do {
      try connection.simpleQuery("BEGIN")
      defer { _ = try? connection.simpleQuery("ROLLBACK") }
      try connection.query(
        "INSERT INTO sluice.outcomes (source, event_id, actor, status) VALUES ($1, $2, 'probe', 'dead')", key)
      let updated = try connection.query(
        "UPDATE sluice.outcomes SET status = 'applied' WHERE source = $1 AND event_id = $2", key
      ).affectedRows
      let deleted = try connection.query("DELETE FROM sluice.outcomes WHERE source = $1 AND event_id = $2", key)
        .affectedRows
      return updated == 1 && deleted == 1 ? nil : "row-level security hides the rows it writes"
    } catch {
      return "\(error)"
    }
  }

  /// Whether this session's role holds `privilege` on the table (with
  /// outcomes off, the commands that would touch them skip them without).
  static func mayTouch(_ privilege: String, on connection: PGConnection) -> Bool {
    (try? connection.query("SELECT has_table_privilege('sluice.outcomes', $1)", [privilege]).scalar) == "t"
  }

  // MARK: - Who reads other actors' outcomes

  /// Why roles other than the daemon's own could read outcomes of other
  /// actors (`sluice check`): row-level security off, a policy other than
  /// migration 008's that lets someone see rows, or a role that can SELECT
  /// and bypasses row-level security (BYPASSRLS, or a member of the
  /// table's owner). Superusers and the owner itself are the
  /// administrators, not clients. A sync layer's own role is often such a
  /// role: then its rules must give each user only their own rows (docs/outcomes.md).
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
    // Migration 008's policy, as Postgres prints it back.
    let ownActor = "(actor = current_setting('sluice.actor'::text, true))"
    for row in try connection.query(
      """
      SELECT qual FROM pg_policies
      WHERE schemaname = 'sluice' AND tablename = 'outcomes' AND policyname = 'outcomes_own_actor'
      """
    ).rows where row[0] != ownActor {
      warnings.append(
        "policy outcomes_own_actor on sluice.outcomes was changed to \(row[0] ?? "no condition"): it should be \(ownActor)"
      )
    }
    // Any other policy that lets rows be read (roles.sql's for the daemon
    // too): every role it applies to, members included, but the daemons
    // (replication roles), the owner, superusers and this role.
    for row in try connection.query(
      """
      SELECT p.policyname, string_agg(r.rolname, ', ' ORDER BY r.rolname)
      FROM pg_policies p, pg_roles r, pg_class c
      WHERE p.schemaname = 'sluice' AND p.tablename = 'outcomes' AND p.policyname <> 'outcomes_own_actor'
        AND p.cmd IN ('SELECT', 'ALL') AND p.permissive = 'PERMISSIVE'
        AND c.oid = 'sluice.outcomes'::regclass AND r.oid <> c.relowner
        AND NOT r.rolsuper AND NOT r.rolreplication AND r.rolname <> current_user AND r.rolname NOT LIKE 'pg\\_%'
        AND has_table_privilege(r.oid, c.oid, 'SELECT')
        AND ('public' = ANY (p.roles) OR EXISTS (
              SELECT 1 FROM pg_roles g WHERE g.rolname = ANY (p.roles) AND pg_has_role(r.oid, g.oid, 'USAGE')))
      GROUP BY p.policyname ORDER BY p.policyname
      """
    ).rows {
      warnings.append(
        "policy \(row[0] ?? "") on sluice.outcomes also lets \(row[1] ?? "") read rows (roles.sql's outcomes_daemon shows every row): check that it keeps each to their own actor"
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
