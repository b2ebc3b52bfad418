import SluiceCore
import SluicePostgres

/// `sluice status`: where the slot stands and what the ledger holds.
public struct StatusReport: Sendable {
  public var database: String
  public var slot: String
  public var slotExists: Bool
  public var streaming: Bool
  public var streamingPID: Int?
  public var confirmedLSN: String?
  public var lagBytes: Int?
  public var lagSeconds: Double?
  public var retainedWALBytes: Int?
  public var counts: [String: Int]
  public var dead: [Operations.DeadEvent]
  public var outbox: Outbox
  /// Per source with `retain`: final rows retention may delete now.
  public var retentionWaiting: [Retention.Outcome]
  /// The ledger on disk (SPEC 11).
  public var ledger: LedgerPartitions.Size
  /// Outcomes (SPEC 12): whether this configuration writes them, and the
  /// rows old enough for retention to delete (it runs on the slot's holder).
  public var outcomes: OutcomeSummary
  /// Backfills running now (SPEC 8), as they last reported (every 5 s).
  public var backfills: [BackfillState] = []
  public struct BackfillState: Sendable {
    public var source: String
    public var done: Int
    public var total: Int
    public var rowsPerSecond: Double
    public var etaSeconds: Double? { rowsPerSecond > 0 ? Double(total - done) / rowsPerSecond : nil }
  }
  public struct OutcomeSummary: Sendable {
    public var on: Bool
    public var retentionSeconds: Int
    public var waiting: Int
  }

  /// Webhook deliveries (SPEC section 9).
  public struct Outbox: Sendable {
    public var pending: Int
    public var dead: Int
    public var oldestPendingSeconds: Double?
    /// Delivered, and older than SLUICE_OUTBOX_RETENTION: the next retention pass deletes them.
    public var deliveredPastRetention = 0
  }

  public func json() -> String {
    var writer = JSONWriter()
    func optional<T>(_ value: T?, _ make: (T) -> ColumnValue) -> ColumnValue { value.map(make) ?? .null }
    writer.raw("{")
    writer.key("database")
    writer.string(database)
    writer.raw(",")
    writer.key("slot")
    writer.object([
      ("name", .text(slot)), ("exists", .bool(slotExists)), ("streaming", .bool(streaming)),
      ("active_pid", optional(streamingPID) { .int(Int64($0)) }),
      ("confirmed_flush_lsn", optional(confirmedLSN, ColumnValue.text)),
      ("lag_bytes", optional(lagBytes) { .int(Int64($0)) }), ("lag_seconds", optional(lagSeconds, ColumnValue.float)),
      ("retained_wal_bytes", optional(retainedWALBytes) { .int(Int64($0)) }),
    ])
    writer.raw(",")
    writer.key("events")
    writer.object(EventStatus.allCases.map { ($0.rawValue, .int(Int64(counts[$0.rawValue] ?? 0))) })
    writer.raw(",")
    writer.key("dead")
    writer.raw("[")
    for (index, event) in dead.enumerated() {
      if index > 0 { writer.raw(",") }
      writer.object([
        ("source", .text(event.source)), ("event_id", .text(event.eventID)),
        ("event_type", optional(event.eventType, ColumnValue.text)),
        ("reason", optional(event.reason, ColumnValue.text)),
      ])
    }
    writer.raw("],")
    writer.key("outbox")
    writer.object([
      ("pending", .int(Int64(outbox.pending))), ("dead", .int(Int64(outbox.dead))),
      ("oldest_pending_seconds", optional(outbox.oldestPendingSeconds, ColumnValue.float)),
      ("delivered_past_retention", .int(Int64(outbox.deliveredPastRetention))),
    ])
    writer.raw(",")
    writer.key("retention_waiting")
    writer.object(retentionWaiting.map { ($0.relation, .int(Int64($0.rows))) })
    writer.raw(",")
    writer.key("outcomes")
    writer.object([
      ("on", .bool(outcomes.on)), ("retention_seconds", .int(Int64(outcomes.retentionSeconds))),
      ("retention_waiting", .int(Int64(outcomes.waiting))),
    ])
    writer.raw(",")
    writer.key("backfills")
    writer.raw("[")
    for (index, backfill) in backfills.enumerated() {
      if index > 0 { writer.raw(",") }
      writer.object([
        ("source", .text(backfill.source)), ("rows_done", .int(Int64(backfill.done))),
        ("rows_total", .int(Int64(backfill.total))), ("rows_per_second", .float(backfill.rowsPerSecond)),
        ("eta_seconds", optional(backfill.etaSeconds, ColumnValue.float)),
      ])
    }
    writer.raw("],")
    writer.key("ledger")
    writer.object([
      ("partitions", .int(Int64(ledger.partitions))), ("events", .int(Int64(ledger.events))),
      ("bytes", .int(Int64(ledger.bytes))), ("bytes_per_event", optional(ledger.bytesPerEvent, ColumnValue.float)),
    ])
    writer.raw("}")
    return String(decoding: writer.bytes, as: UTF8.self)
  }

  public func text() -> String {
    var lines = ["database   \(database)"]
    if slotExists {
      lines.append(
        "slot       \(slot): \(streaming ? "streaming (walsender pid \(streamingPID.map(String.init) ?? "?"))" : "not streaming")"
      )
      lines.append("confirmed  \(confirmedLSN ?? "-")")
      lines.append("lag        \(lagBytes ?? 0) bytes, \(String(format2(lagSeconds ?? 0))) s")
      lines.append("retained   \(retainedWALBytes ?? 0) bytes of WAL")
    } else {
      lines.append("slot       \(slot): does not exist yet (sluice run creates it)")
    }
    lines.append(
      "events     " + EventStatus.allCases.map { "\($0.rawValue) \(counts[$0.rawValue] ?? 0)" }.joined(separator: ", "))
    for event in dead.prefix(20) {
      lines.append("dead       \(event.source)/\(event.eventID) \(event.eventType ?? ""): \(event.reason ?? "")")
    }
    if dead.count > 20 { lines.append("dead       … \(dead.count - 20) more: sluice dlq list") }
    lines.append(
      "outbox     pending \(outbox.pending), dead \(outbox.dead)"
        + (outbox.oldestPendingSeconds.map { ", oldest pending \(format2($0)) s" } ?? "")
        + ", delivered past retention \(outbox.deliveredPastRetention)")
    for source in retentionWaiting {
      lines.append("retention  \(source.relation): \(source.rows) processed rows waiting to be deleted")
    }
    lines.append(
      "outcomes   \(outcomes.on ? "on" : "off"), \(outcomes.waiting) rows older than \(outcomes.retentionSeconds) s waiting to be deleted"
    )
    for backfill in backfills {
      lines.append(
        "backfill   \(backfill.source): \(backfill.done) of \(backfill.total) rows, \(Int(backfill.rowsPerSecond.rounded())) rows/s"
          + (backfill.etaSeconds.map { ", ETA \(Int($0.rounded())) s" } ?? ""))
    }
    lines.append(
      "ledger     \(ledger.events) events in \(ledger.partitions) partitions, \(ledger.bytes) bytes on disk"
        + (ledger.bytesPerEvent.map { " (\(Int($0.rounded())) bytes per event)" } ?? ""))
    return lines.joined(separator: "\n")
  }

  private func format2(_ value: Double) -> String {
    let scaled = (value * 100).rounded() / 100
    return String(scaled)
  }
}

extension Operations {
  public func status() throws -> StatusReport {
    let connection = try connect("sluice-status")
    defer { connection.close() }
    let slot = try connection.query(
      """
      SELECT active, active_pid, confirmed_flush_lsn::text,
             (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, (pg_current_wal_lsn() - restart_lsn)::bigint,
             EXTRACT(epoch FROM now() - (SELECT updated_at FROM sluice.stream_state WHERE slot = $1))::float8
      FROM pg_replication_slots WHERE slot_name = $1
      """, [configuration.slot]
    ).rows.first
    var counts: [String: Int] = [:]
    for row in try connection.query("SELECT status, count(*) FROM sluice.event_log GROUP BY status").rows {
      counts[row[0] ?? ""] = Int(row[1] ?? "") ?? 0
    }
    let lagBytes = slot.flatMap { $0[3] }.flatMap { Int($0) }
    // Seconds behind: 0 when caught up, else the time since the daemon last committed.
    let lagSeconds = lagBytes.map { $0 > 0 ? (slot?[5].flatMap { Double($0) } ?? 0) : 0 }
    return StatusReport(
      database: configuration.redactedDatabaseURL, slot: configuration.slot, slotExists: slot != nil,
      streaming: slot?[0] == "t", streamingPID: slot.flatMap { $0[1] }.flatMap { Int($0) },
      confirmedLSN: slot.flatMap { $0[2] }, lagBytes: lagBytes, lagSeconds: lagSeconds,
      retainedWALBytes: slot.flatMap { $0[4] }.flatMap { Int($0) }, counts: counts,
      dead: try deadEvents(),
      outbox: try Self.outboxSummary(connection, retentionSeconds: configuration.outboxRetentionSeconds),
      retentionWaiting: try Retention.waiting(
        connection, slot: configuration.slot, publication: configuration.publication),
      ledger: try LedgerPartitions.size(on: connection, events: counts.values.reduce(0, +)),
      outcomes: StatusReport.OutcomeSummary(
        on: configuration.outcomes, retentionSeconds: configuration.outcomeRetentionSeconds,
        waiting: configuration.outcomes || Outcomes.mayTouch("SELECT", on: connection)
          ? try Outcomes.waiting(
            retentionSeconds: configuration.outcomeRetentionSeconds, slot: configuration.slot, on: connection) : 0),
      backfills: try Self.runningBackfills(connection))
  }

  /// Backfills on this database that reported in the last minute and are not done.
  static func runningBackfills(_ connection: PGConnection) throws -> [StatusReport.BackfillState] {
    try connection.query(
      """
      SELECT source, rows_done, rows_total, rows_per_second FROM sluice.backfill_progress
      WHERE rows_done < rows_total AND updated_at > now() - interval '1 minute' ORDER BY source
      """
    ).rows.map {
      StatusReport.BackfillState(
        source: $0[0] ?? "?", done: Int($0[1] ?? "") ?? 0, total: Int($0[2] ?? "") ?? 0,
        rowsPerSecond: Double($0[3] ?? "") ?? 0)
    }
  }

  /// Who, besides the tables' owner, superusers and the connected role, may
  /// write Sluice's tables (`PUBLIC` counts; effective privileges, so grants
  /// through role membership, `pg_write_all_data` and column privileges
  /// count too). The rule tables (sources, rules, roles, handlers,
  /// endpoints) are the whole security boundary; the daemon's own tables
  /// (ledger, mirror, state) decide what counts as processed, so there only
  /// replication roles (the daemon's) may write as well; so too outcomes,
  /// where row-level security stops a client's INSERT, UPDATE and DELETE
  /// of rows but neither TRUNCATE nor the table locks these privileges
  /// allow. TRIGGER and REFERENCES count: a trigger runs its owner's code
  /// in the daemon's writes, a foreign key can make them fail.
  static func configurationWriters(_ connection: PGConnection) throws -> [(
    table: String, role: String, privileges: String
  )] {
    try connection.query(
      """
      WITH tables AS (
        SELECT c.oid, c.relowner, n.nspname || '.' || c.relname AS name,
               c.relname IN ('sources', 'permission_rules', 'actor_roles', 'handlers', 'endpoints') AS rules
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'sluice' AND c.relkind IN ('r', 'p') AND c.relname <> 'schema_migrations'),
      grantees AS (
        SELECT oid, rolname, rolsuper, rolreplication FROM pg_roles
        UNION ALL SELECT 0, 'PUBLIC', false, false)
      SELECT t.name, g.rolname, string_agg(p.privilege, ', ' ORDER BY p.privilege)
      FROM tables t CROSS JOIN grantees g
      CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'TRIGGER', 'REFERENCES']) AS p(privilege)
      WHERE NOT g.rolsuper AND g.oid <> t.relowner AND g.rolname <> current_user
        AND (t.rules OR NOT g.rolreplication)
        AND CASE WHEN g.oid = 0
                 THEN has_table_privilege('public', t.oid, p.privilege)
                      OR (p.privilege IN ('INSERT', 'UPDATE', 'REFERENCES')
                          AND has_any_column_privilege('public', t.oid, p.privilege))
                 ELSE has_table_privilege(g.oid, t.oid, p.privilege)
                      OR (p.privilege IN ('INSERT', 'UPDATE', 'REFERENCES')
                          AND has_any_column_privilege(g.oid, t.oid, p.privilege))
            END
        AND g.rolname NOT LIKE 'pg\\_%'
      GROUP BY 1, 2 ORDER BY 1, 2
      """
    ).rows.map { ($0[0] ?? "?", $0[1] ?? "?", $0[2] ?? "?") }
  }

  /// Sources whose table the publication does not publish (recreated,
  /// dropped from it by hand): their rows would never reach the daemon.
  static func unpublishedSources(_ connection: PGConnection, publication: String) throws -> [String] {
    try connection.query(
      """
      SELECT s.relation FROM sluice.sources s
      WHERE NOT EXISTS (SELECT 1 FROM pg_publication_tables p
                        WHERE p.pubname = $1 AND p.schemaname || '.' || p.tablename = s.relation)
      ORDER BY 1
      """, [publication]
    ).rows.compactMap { $0[0] }
  }

  /// One finding of `sluice check`.
  public struct Finding: Sendable {
    public var ok: Bool
    public var what: String
    /// How to fix it, when not ok.
    public var fix: String?
    /// Not ok, but `run` works: worth a look, not a failure of `check`.
    public var warning = false
    /// Not ok, and `run` refuses to start (exit 78), as does `check` (SPEC 13).
    public var refusesRun = false
  }

  /// `sluice check`: everything `run` needs, each with how to fix it.
  public func check() -> [Finding] {
    var findings: [Finding] = []
    let connection: PGConnection
    do {
      connection = try connect("sluice-check")
    } catch {
      return [
        Finding(
          ok: false, what: "connect to \(configuration.redactedDatabaseURL): \(error)",
          fix:
            "check host, port, user and password in SLUICE_DATABASE_URL (or PG* variables / .pgpass), and pg_hba.conf")
      ]
    }
    defer { connection.close() }
    findings.append(Finding(ok: true, what: "connect to \(configuration.redactedDatabaseURL)"))
    func probe(_ what: String, _ fix: String, _ test: () throws -> Bool) {
      do {
        findings.append(Finding(ok: try test(), what: what, fix: fix))
      } catch {
        findings.append(Finding(ok: false, what: "\(what): \(error)", fix: fix))
      }
    }
    probe("wal_level is logical", "set wal_level = logical in postgresql.conf and restart Postgres") {
      try connection.query("SHOW wal_level").scalar == "logical"
    }
    // SPEC 8: backfills keep commit order; without commit timestamps, by transaction id.
    if let tracked = try? connection.query("SHOW track_commit_timestamp").scalar, tracked != "on" {
      findings.append(
        Finding(
          ok: false,
          what:
            "track_commit_timestamp is off: backfills order rows by transaction id, which is the order transactions began, not always the order they committed",
          fix: "set track_commit_timestamp = on in postgresql.conf and restart Postgres", warning: true))
    }
    probe(
      "role may replicate (REPLICATION or superuser)",
      "ALTER ROLE <the daemon's role> REPLICATION; (or use the role sql/roles.sql creates)"
    ) {
      try connection.query("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user").scalar == "t"
    }
    probe(
      "replication connection accepted (IDENTIFY_SYSTEM)",
      "allow it in pg_hba.conf: a logical replication connection is matched by its database name, not by the `replication` keyword (which is for physical replication only): host <database> <role> <address> scram-sha-256"
    ) {
      let stream = try ReplicationConnection(conninfo: configuration.databaseURL, applicationName: "sluice-check")
      defer { stream.close() }
      _ = try stream.identifySystem()
      return true
    }
    probe("schema is migrated", "run `sluice migrate`") { try Migrator.pending(connection).isEmpty }
    do {
      for relation in try Self.unpublishedSources(connection, publication: configuration.publication) {
        findings.append(
          Finding(
            ok: false,
            what: "source \(relation) is not in publication \(configuration.publication): its rows never arrive",
            fix: "SELECT sluice.add_source(...) for it again, or ALTER PUBLICATION ... ADD TABLE \(relation)"))
      }
    } catch {
      findings.append(
        Finding(ok: false, what: "compare sources and publication: \(error)", fix: "run `sluice migrate`"))
    }
    do {
      let writers = try Self.configurationWriters(connection)
      if writers.isEmpty {
        findings.append(Finding(ok: true, what: "only the owner, superusers and this role can change the rules"))
      }
      for writer in writers {
        findings.append(
          Finding(
            ok: false,
            what: "\(writer.role) can \(writer.privileges) on \(writer.table): "
              + (writer.table == "sluice.outcomes"
                ? "it can wipe or lock what every client is told" : "it can grant itself anything"),
            fix:
              "REVOKE INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER, REFERENCES ON \(writer.table) FROM \(writer.role == "PUBLIC" ? "PUBLIC" : PGConnection.quoteIdentifier(writer.role)); never expose the configuration tables to a sync layer's write path"
          ))
      }
    } catch {
      findings.append(
        Finding(ok: false, what: "read the configuration tables' privileges: \(error)", fix: "run `sluice migrate`"))
    }
    findings += checkOutcomes(connection)
    do {
      findings += try IdentityChecks.findings(connection)
    } catch {
      findings.append(
        Finding(ok: false, what: "read where sources take their actor from: \(error)", fix: "run `sluice migrate`"))
    }
    probe("publication \(configuration.publication) exists", "run `sluice migrate` (or `sluice run`, which creates it)")
    {
      try !connection.query("SELECT 1 FROM pg_publication WHERE pubname = $1", [configuration.publication]).rows.isEmpty
    }
    do {
      let slot = try connection.query(
        """
        SELECT database = current_database(), database, active, active_pid, plugin,
               (SELECT application_name FROM pg_stat_activity WHERE pid = active_pid)
        FROM pg_replication_slots WHERE slot_name = $1
        """, [configuration.slot]
      ).rows.first
      if let slot {
        if slot[0] != "t" {
          findings.append(
            Finding(
              ok: false, what: "slot \(configuration.slot) belongs to database \(slot[1] ?? "?")",
              fix: "set SLUICE_SLOT to a slot name of its own for this database"))
        } else if slot[4] != "pgoutput" {
          findings.append(
            Finding(
              ok: false, what: "slot \(configuration.slot) uses plugin \(slot[4] ?? "?")",
              fix: "drop it (SELECT pg_drop_replication_slot('\(configuration.slot)')) or choose another SLUICE_SLOT"))
        } else if slot[2] == "t" {
          let holder = "pid \(slot[3] ?? "?") (\(slot[5] ?? "unknown application"))"
          findings.append(
            Finding(
              ok: slot[5] == "sluice", what: "slot \(configuration.slot) is held by \(holder)",
              fix: "another process streams this slot: stop it, or give this daemon another SLUICE_SLOT"))
        } else {
          findings.append(Finding(ok: true, what: "slot \(configuration.slot) exists and is free"))
        }
      } else {
        probe(
          "a replication slot is free for \(configuration.slot) (it will be created)",
          "raise max_replication_slots in postgresql.conf, or drop unused slots"
        ) {
          try connection.query(
            "SELECT (SELECT count(*) FROM pg_replication_slots) < current_setting('max_replication_slots')::int"
          ).scalar == "t"
        }
      }
    } catch {
      findings.append(Finding(ok: false, what: "read pg_replication_slots: \(error)", fix: "grant the role pg_monitor"))
    }
    return findings
  }

  /// With outcomes on: that no client role can read other actors' outcomes
  /// (warnings: the sync layer's role may need to, and filter itself), and
  /// that the outcomes publication, if named, carries the table.
  private func checkOutcomes(_ connection: PGConnection) -> [Finding] {
    var findings = configuration.outcomes ? whoWritesAndReadsOutcomes(connection) : []
    // `run` ensures the publication whenever it is named, outcomes on or off.
    if let publication = configuration.outcomesPublication { findings.append(published(publication, connection)) }
    return findings
  }

  private func whoWritesAndReadsOutcomes(_ connection: PGConnection) -> [Finding] {
    var findings: [Finding] = []
    let why = Outcomes.cannotWrite(on: connection)
    findings.append(
      Finding(
        ok: why == nil, what: "this role can write sluice.outcomes" + (why.map { ": \($0)" } ?? ""),
        fix:
          "run sql/roles.sql again as the owner (it grants sluice_daemon the table and its policy), or set SLUICE_OUTCOMES=off"
      ))
    do {
      let readers = try Outcomes.readersOfOthers(on: connection)
      if readers.isEmpty {
        findings.append(
          Finding(ok: true, what: "outcomes: each role but the owner and superusers reads only its actor's rows"))
      }
      for reader in readers {
        findings.append(
          Finding(
            ok: false, what: "outcomes: \(reader)",
            fix:
              "keep row-level security on sluice.outcomes with only policy outcomes_own_actor for clients; a sync layer's role may read all rows only if its own rules give each user theirs (docs/outcomes.md)",
            warning: true))
      }
    } catch {
      findings.append(
        Finding(ok: false, what: "outcomes: read their privileges: \(error)", fix: "run `sluice migrate`"))
    }
    return findings
  }

  private func published(_ publication: String, _ connection: PGConnection) -> Finding {
    let published =
      (try? connection.query(
        "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = 'sluice' AND tablename = 'outcomes'",
        [publication]
      ).rows.isEmpty == false) ?? false
    return Finding(
      ok: published, what: "outcomes are in publication \(publication)",
      fix:
        "run `sluice migrate` (or `sluice run`) with SLUICE_OUTCOMES_PUBLICATION set, as a role that owns the publication and sluice.outcomes"
    )
  }
}
