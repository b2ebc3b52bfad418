import Logging
import SluiceCore
import SluiceHTTP
import SluicePostgres
import Synchronization

extension SignatureCheck {
  /// `'signed'` sources' rows are verified with libcrypto's Ed25519.
  static let ed25519 = SignatureCheck(verifier: Ed25519())
}

/// Loads and saves the policy: from the configuration tables (at slot
/// creation, in the slot's snapshot) or from `sluice.policy_mirror` (on restart).
enum PolicyStore {
  /// The policy as the configuration tables stand in the connection's snapshot.
  static func loadFromTables(_ connection: PGConnection) throws -> Policy {
    var policy = Policy()
    for table in Policy.Table.allCases {
      let result = try connection.query("SELECT * FROM \(table.relation)")
      for row in result.rows {
        var values: [String: String?] = [:]
        for (index, column) in result.columns.enumerated() { values[column] = row[index] }
        policy.apply(.upsert(table, key: table.key { values[$0] ?? nil } ?? "", row: values))
      }
    }
    return policy
  }

  /// The slot's policy as of the end of the last source transaction the
  /// daemon committed, and that transaction's end LSN (see `StreamPlanner.mirrorPosition`).
  static func loadFromMirror(_ connection: PGConnection, slot: String) throws -> (Policy, LSN?) {
    let position = try connection.query("SELECT mirror_lsn::text FROM sluice.stream_state WHERE slot = $1", [slot])
      .scalar.flatMap { LSN($0) }
    let result = try connection.query(
      """
      SELECT m.table_name, m.key, e.k, e.v FROM sluice.policy_mirror m
      LEFT JOIN LATERAL jsonb_each_text(m.row) AS e(k, v) ON true WHERE m.slot = $1 ORDER BY m.table_name, m.key
      """, [slot])
    var grouped: [String: (Policy.Table, String, [String: String?])] = [:]
    var order: [String] = []
    for row in result.rows {
      guard let name = row[0], let table = Policy.Table(rawValue: name), let key = row[1] else { continue }
      let id = name + "\u{0}" + key
      if grouped[id] == nil {
        grouped[id] = (table, key, [:])
        order.append(id)
      }
      if let column = row[2] { grouped[id]?.2[column] = row[3] }
    }
    var policy = Policy()
    for id in order {
      guard let (table, key, values) = grouped[id] else { continue }
      policy.apply(.upsert(table, key: key, row: values))
    }
    return (policy, position)
  }

  /// Rewrites the slot's mirror from the configuration tables, in the connection's transaction.
  static func copyTablesToMirror(_ connection: PGConnection, slot: String) throws {
    try connection.query("DELETE FROM sluice.policy_mirror WHERE slot = $1", [slot])
    for table in Policy.Table.allCases {
      try connection.query(
        """
        INSERT INTO sluice.policy_mirror (slot, table_name, key, row)
        SELECT $1, $2, \(table.keySQL("t")), to_jsonb(t) FROM \(table.relation) t
        """, [slot, table.rawValue])
    }
  }

  static func isMirrorReady(_ connection: PGConnection, slot: String) throws -> Bool {
    try connection.query("SELECT mirror_ready FROM sluice.stream_state WHERE slot = $1", [slot]).scalar == "t"
  }

  /// The mirror is being rebuilt for a new slot: until `markReady`, a
  /// restart recreates the slot and starts over.
  static func markNotReady(_ connection: PGConnection, slot: String) throws {
    try connection.query("UPDATE sluice.stream_state SET mirror_ready = false WHERE slot = $1", [slot])
  }

  static func markReady(_ connection: PGConnection, slot: String) throws {
    try connection.query(
      """
      INSERT INTO sluice.stream_state (slot, mirror_ready, processed_lsn, updated_at) VALUES ($1, true, NULL, now())
      ON CONFLICT (slot) DO UPDATE SET mirror_ready = true, processed_lsn = NULL, mirror_lsn = NULL,
        ledger_high_water = NULL, updated_at = now()
      """, [slot])
  }
}

/// Processes the rows of a source that the ledger has not seen, in commit order.
///
/// Linear in the rows whatever the planner's statistics say, in two steps:
/// - `copy`, in the reader's transaction (the snapshot whose rows are to be
///   backfilled): the source's rows, numbered in commit order, into a temporary
///   table of the reader's session (one scan and one sort, written to no WAL),
///   with columns of its own: a later change of the source's columns
///   changes neither the copy nor what its rows become;
/// - `process`, once that transaction ended: the copy in ranges of
///   `batchSize` numbers, each read by its own statement and looked up in
///   the ledger by index probes (`Ledger.seen`, `sluice.ledger_seen`).
///
/// It used to read through one cursor of an anti join against the ledger,
/// planned once when the cursor opened (on an ANALYZEd empty ledger: a scan
/// of the ledger per row), and to hold the snapshot until the end, which
/// kept every row version the handlers left behind from being pruned (the
/// game's `user_xp` rows grew chains of versions that each upsert walked):
/// both went quadratic.
enum Backfill {
  /// Names the copies apart (several sources in one reader's session).
  private static let copies = Atomic<Int>(0)

  /// A source's rows copied for a backfill.
  struct Copy {
    var relation: String
    var table: String
    /// The rows copied: what the backfill has to go through.
    var rows = 0
  }

  /// In the reader's open transaction: copies the rows of `source` (not
  /// those `excludingXID` wrote: the registering transaction's rows are the
  /// stream's) into a temporary table, numbered in commit order.
  static func copy(source: SourceMapping, reader: PGConnection, excludingXID: String? = nil) throws -> Copy {
    let table = "sluice_backfill_\(copies.add(1, ordering: .relaxed).newValue)"
    let relation = PGConnection.quoteQualified(source.relation)
    let id = PGConnection.quoteIdentifier(source.idColumn)
    let order = try commitOrder(reader, id: "t.\(id)")
    try reader.query("DROP TABLE IF EXISTS pg_temp.\(table)")
    // SPEC 13: a 'session' source's rows from before its guard never proved their actor.
    let judged = source.actorFrom == .session && !source.trustsExisting
    let copied = try reader.query(
      """
      CREATE TEMPORARY TABLE \(table) AS
      SELECT row_number() OVER (ORDER BY \(order)) AS sluice_backfill_n,
             \(judged ? "sluice.before_guard(f.fence, f.guard_xid, t.xmin)" : "false") AS sluice_backfill_before_guard,
             t.*
      FROM \(relation) t
      \(judged ? "LEFT JOIN sluice.guard_fences(\(PGConnection.quoteLiteral(source.relation))) f ON f.tableoid = t.tableoid" : "")
      \(excludingXID.map { "WHERE t.xmin::text <> \(PGConnection.quoteLiteral($0))" } ?? "")
      """)
    try reader.query("CREATE INDEX ON pg_temp.\(table) (sluice_backfill_n)")
    return Copy(relation: source.relation, table: table, rows: copied.affectedRows)
  }

  /// SPEC 8: rows in the order their transactions committed, so that an
  /// undo recovered after a lost slot follows the award it undoes (and ids
  /// a client picks buy no place in the queue). With
  /// `track_commit_timestamp`, by commit time (rows from before it was on,
  /// or frozen, have none: they are older, and go first); otherwise, and
  /// within one timestamp, by transaction id, oldest first: `age(xmin)` is
  /// counted from the current id, so it orders across wraparound, and a
  /// frozen row's is the largest. By id only within one transaction.
  static func commitOrder(_ reader: PGConnection, id: String) throws -> String {
    let tracked = try reader.query("SHOW track_commit_timestamp").scalar == "on"
    return (tracked ? "pg_xact_commit_timestamp(t.xmin) NULLS FIRST, " : "") + "age(t.xmin) DESC, \(id)"
  }

  /// Once the reader's transaction ended: applies the copy through
  /// `processor` in batches, and drops it. Returns the rows that were new to
  /// the ledger.
  static func process(
    _ copy: Copy, reader: PGConnection, processor: BatchProcessor, batchSize: Int, stop: StopSignal?,
    progress: BackfillReporter? = nil
  ) throws -> Int {
    let before = processor.counts.values.reduce(0, +)
    progress?.begin(copy, on: reader)
    var last = 0
    while stop?.isSet != true {
      var result = try reader.query(
        """
        SELECT * FROM pg_temp.\(copy.table)
        WHERE sluice_backfill_n > $1 AND sluice_backfill_n <= $2 ORDER BY sluice_backfill_n
        """, [String(last), String(last + batchSize)])
      if result.rows.isEmpty { break }
      // The copy's own columns (the source's as they were), less the number and the guard's verdict.
      result.columns.removeFirst(2)
      result.types.removeFirst(2)
      let rows = result.rows.map {
        StreamPlanner.ReadRow(
          relation: copy.relation, row: Operations.typedRow(result, Array($0.dropFirst(2))), beforeGuard: $0[1] == "t")
      }
      try processor.processRows(rows)
      last += batchSize
      progress?.advance(to: min(last, copy.rows), on: reader)
    }
    if stop?.isSet != true { try reader.query("DROP TABLE pg_temp.\(copy.table)") }
    return processor.counts.values.reduce(0, +) - before
  }
}

/// Says how far a backfill is (SPEC 8), every 5 s and at its end: in the
/// log, to `status` (systemd's STATUS= in the daemon) through `onReport`,
/// in `sluice.backfill_progress` for `sluice status`, and as a bar when
/// `bar` draws one (`sluice backfill` on a terminal).
final class BackfillReporter {
  private let slot: String
  private let logger: Logger
  private let onReport: (String) -> Void
  private let bar: ((String) -> Void)?
  private var progress: BackfillProgress?
  private var toldUnwritable = false
  private let clock = ContinuousClock()
  private let origin: ContinuousClock.Instant

  init(slot: String, logger: Logger, onReport: @escaping (String) -> Void = { _ in }, bar: ((String) -> Void)? = nil) {
    self.slot = slot
    self.logger = logger
    self.onReport = onReport
    self.bar = bar
    origin = clock.now
  }

  private var now: Double { origin.duration(to: clock.now).inSeconds }

  func begin(_ copy: Backfill.Copy, on connection: PGConnection) {
    progress = BackfillProgress(source: copy.relation, total: copy.rows, now: now)
    if copy.rows > 0 { report(on: connection) }
  }

  func advance(to done: Int, on connection: PGConnection) {
    guard var progress else { return }
    let due = progress.advance(to: done, now: now)
    self.progress = progress
    bar?(progress.bar(now: now))
    if due { report(on: connection) }
  }

  private func report(on connection: PGConnection) {
    guard let progress else { return }
    let line = progress.line(now: now)
    if bar == nil {  // a terminal's bar says it already
      logger.info(
        "backfill progress",
        metadata: [
          "source": "\(progress.source)", "rows": "\(progress.done)", "of": "\(progress.total)",
          "rows_per_s": "\(Int(progress.rate(now: now).rounded()))",
          "eta_s": "\(progress.etaSeconds(now: now).map { String(Int($0.rounded())) } ?? "?")",
        ])
    }
    onReport("backfilling \(line)")
    // For `sluice status`; a backfill never fails for want of this row (said once).
    do {
      try connection.query(
        """
        INSERT INTO sluice.backfill_progress AS p (slot, source, rows_done, rows_total, rows_per_second, started_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, now() - make_interval(secs => $6::float8), now())
        ON CONFLICT (slot, source) DO UPDATE SET rows_done = EXCLUDED.rows_done, rows_total = EXCLUDED.rows_total,
          rows_per_second = EXCLUDED.rows_per_second, updated_at = now(),
          started_at = CASE WHEN p.rows_done > EXCLUDED.rows_done THEN EXCLUDED.started_at ELSE p.started_at END
        """,
        [
          slot, progress.source, String(progress.done), String(progress.total), String(progress.rate(now: now)),
          String(now - progress.started),
        ])
    } catch {
      if !toldUnwritable {
        toldUnwritable = true
        logger.warning(
          "backfill progress cannot be written for status (sluice.backfill_progress; run sql/roles.sql again)",
          metadata: ["error": "\(error)"])
      }
    }
  }
}
