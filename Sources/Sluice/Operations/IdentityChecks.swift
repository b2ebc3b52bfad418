import SluiceCore
import SluicePostgres

/// SPEC 13's checks of where each source's actor comes from, shared by
/// `sluice check` (which prints them) and `run` (which refuses to start,
/// exit 78, on a refusal, logs the rest as warnings at start, and looks
/// again every few seconds while it streams).
enum IdentityChecks {
  /// The inserting roles a source trusts to name any actor: superusers,
  /// members of the table's owner, members of sluice_trusted_writer.
  static let trustedRoles = "a superuser, the table's owner, or a member of sluice_trusted_writer"

  static func findings(_ connection: PGConnection) throws -> [Operations.Finding] {
    var findings: [Operations.Finding] = []
    for (source, table, state) in try guardProblems(connection) {
      findings.append(
        Operations.Finding(
          ok: false,
          what:
            "source \(source) takes its actor from the session, but \(table == source ? "its" : "partition \(table)'s") guard is \(state): clients can act as anyone",
          fix: "SELECT sluice.install_guard('\(source)'); (or register it again with sluice.add_source)",
          refusesRun: true))
    }
    for bypass in try guardBypasses(connection) {
      findings.append(
        Operations.Finding(
          ok: false,
          what:
            "source \(bypass.source) takes its actor from the session, but on \(bypass.table) \(bypass.what), after the guard has judged the row: clients can act as anyone",
          fix: bypass.fix, refusesRun: true))
    }
    for writer in try untrustedWriters(connection) {
      let session = writer.actorFrom == "session"
      findings.append(
        Operations.Finding(
          ok: false,
          what: session
            ? "\(writer.role) can \(writer.privileges) on \(writer.table) (source \(writer.source)): it can turn the session guard off or wipe rows"
            : "\(writer.role) can INSERT into \(writer.table), whose source \(writer.source) takes the actor column as written: it can act as any user",
          fix: session
            ? "REVOKE TRIGGER, TRUNCATE ON \(writer.table) FROM \(writer.quotedRole)"
            : "SELECT sluice.add_source('\(writer.source)', ..., actor_from => 'session'); or REVOKE INSERT ON \(writer.table) FROM \(writer.quotedRole); or GRANT sluice_trusted_writer TO \(writer.quotedRole) if it is a trusted service",
          refusesRun: session))
    }
    let proofs = try connection.query(
      "SELECT relation, actor_from FROM sluice.sources ORDER BY relation COLLATE \"C\""
    ).rows
    for row in proofs where row[1] == "column" {
      findings.append(
        Operations.Finding(
          ok: false,
          what:
            "source \(row[0] ?? "?") takes its actor column as written (actor_from = 'column'): only trusted services may write it",
          fix:
            "SELECT sluice.add_source('\(row[0] ?? "?")', ..., actor_from => 'session') when clients write it (docs/identity.md)",
          warning: true))
    }
    if !proofs.isEmpty, !proofs.contains(where: { $0[1] == "column" }), findings.isEmpty {
      findings.append(Operations.Finding(ok: true, what: "every source proves its actor (session or signed)"))
    }
    for source in try clientChosenScopes(connection) {
      findings.append(
        Operations.Finding(
          ok: false,
          what: "source \(source) takes its scope as the client writes it, while roles are granted per scope",
          fix: "register it with sluice.add_source(..., scope_from => '<function of the row>') (docs/identity.md)",
          warning: true))
    }
    return findings
  }

  /// 'session' sources whose guard is missing, disabled or not Sluice's, on
  /// the table or on any of its partitions: (source, table, state).
  static func guardProblems(_ connection: PGConnection) throws -> [(String, String, String)] {
    try connection.query(
      """
      SELECT s.relation, t.relid::text,
             CASE WHEN tg.oid IS NULL THEN 'missing'
                  WHEN tg.tgenabled <> 'A' THEN 'not enabled always (tgenabled ' || tg.tgenabled::text || ')'
                  ELSE 'not Sluice''s guard function' END
      FROM sluice.sources s
      CROSS JOIN LATERAL sluice.source_tables(s.relation) t(relid)
      LEFT JOIN pg_trigger tg ON tg.tgrelid = t.relid AND tg.tgname = 'sluice_guard'
      WHERE s.actor_from = 'session'
        AND (tg.oid IS NULL OR tg.tgenabled <> 'A'
             OR tg.tgfoid IS DISTINCT FROM to_regprocedure(sluice.guard_function(s.relation) || '()')::oid)
      ORDER BY 1, 2
      """
    ).rows.map { ($0[0] ?? "?", $0[1] ?? "?", $0[2] ?? "?") }
  }

  /// What can change a 'session' source's actor or scope after its guard
  /// has judged the row: another BEFORE row trigger that fires after it
  /// (triggers fire in name order), or a generated actor or scope column
  /// (computed after every BEFORE trigger). Found by review: either one
  /// stored a row in another user's name that the guard had passed.
  static func guardBypasses(_ connection: PGConnection) throws -> [(
    source: String, table: String, what: String, fix: String
  )] {
    try connection.query(
      """
      WITH tables AS (
        SELECT s.relation, s.actor_column, s.scope_column, t.relid
        FROM sluice.sources s CROSS JOIN LATERAL sluice.source_tables(s.relation) t(relid)
        WHERE s.actor_from = 'session')
      SELECT t.relation, t.relid::regclass::text,
             format('trigger %I runs after it (BEFORE row triggers fire in name order) and can rewrite the actor', tg.tgname),
             format('DROP TRIGGER %I ON %s; (or rename it to sort before sluice_guard, if it leaves the actor and scope alone)',
                    tg.tgname, t.relid::regclass)
      FROM tables t JOIN pg_trigger tg ON tg.tgrelid = t.relid
      WHERE NOT tg.tgisinternal AND tg.tgenabled <> 'D' AND tg.tgname COLLATE "C" > 'sluice_guard'
        AND (tg.tgtype & 3) = 3 AND (tg.tgtype & 20) <> 0
      UNION ALL
      SELECT t.relation, t.relid::regclass::text,
             format('column %I is generated (computed after every trigger)', a.attname),
             format('make %I a plain column of %s (the guard fills it from the session)', a.attname, t.relid::regclass)
      FROM tables t JOIN pg_attribute a ON a.attrelid = t.relid AND a.attname IN (t.actor_column, t.scope_column)
      WHERE a.attgenerated <> '' AND NOT a.attisdropped
      ORDER BY 1, 2, 3
      """
    ).rows.map { ($0[0] ?? "?", $0[1] ?? "?", $0[2] ?? "?", $0[3] ?? "?") }
  }

  struct Writer {
    var source: String
    var table: String
    var actorFrom: String
    var role: String
    var privileges: String
    var quotedRole: String { role == "PUBLIC" ? "PUBLIC" : PGConnection.quoteIdentifier(role) }
  }

  /// Roles that are not trusted (directly, through membership, or as
  /// PUBLIC) and may INSERT into a 'column' source, or TRIGGER or TRUNCATE
  /// a 'session' source, or one of their partitions.
  static func untrustedWriters(_ connection: PGConnection) throws -> [Writer] {
    try connection.query(
      """
      WITH tables AS (
        SELECT s.relation, s.actor_from, t.relid, t.relid::regclass::text AS name
        FROM sluice.sources s CROSS JOIN LATERAL sluice.source_tables(s.relation) t(relid)
        WHERE s.actor_from IN ('session', 'column')),
      grantees AS (
        SELECT oid, rolname FROM pg_roles WHERE NOT rolsuper AND rolname NOT LIKE 'pg\\_%'
        UNION ALL SELECT 0, 'PUBLIC')
      SELECT t.relation, t.name, t.actor_from, g.rolname, string_agg(p.privilege, ', ' ORDER BY p.privilege)
      FROM tables t CROSS JOIN grantees g
      CROSS JOIN unnest(CASE t.actor_from WHEN 'session' THEN ARRAY['TRIGGER', 'TRUNCATE'] ELSE ARRAY['INSERT'] END)
        AS p(privilege)
      WHERE (g.oid = 0 OR NOT sluice.trusted_writer(g.rolname, t.relid))
        AND CASE WHEN g.oid = 0
                 THEN has_table_privilege('public', t.relid, p.privilege)
                      OR (p.privilege = 'INSERT' AND has_any_column_privilege('public', t.relid, 'INSERT'))
                 ELSE has_table_privilege(g.oid, t.relid, p.privilege)
                      OR (p.privilege = 'INSERT' AND has_any_column_privilege(g.oid, t.relid, 'INSERT'))
            END
      GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 4
      """
    ).rows.map {
      Writer(
        source: $0[0] ?? "?", table: $0[1] ?? "?", actorFrom: $0[2] ?? "?", role: $0[3] ?? "?",
        privileges: $0[4] ?? "?")
    }
  }

  /// Sources with a scope column the client fills (no scope_from), while some role is granted per scope.
  static func clientChosenScopes(_ connection: PGConnection) throws -> [String] {
    try connection.query(
      """
      SELECT relation FROM sluice.sources
      WHERE scope_column IS NOT NULL AND scope_from IS NULL
        AND EXISTS (SELECT 1 FROM sluice.actor_roles WHERE scope IS NOT NULL)
      ORDER BY 1
      """
    ).rows.compactMap { $0[0] }
  }
}

/// `run` refuses a configuration that would let clients act as anyone (SPEC 13): exit 78.
public struct ConfigurationRefused: Error, CustomStringConvertible {
  public var description: String
}
