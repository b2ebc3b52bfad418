import SluiceCore
import SluicePostgres

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
        policy.apply(.upsert(table, key: (values[table.keyColumn] ?? nil) ?? "", row: values))
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
        SELECT $1, $2, t.\(PGConnection.quoteIdentifier(table.keyColumn))::text, to_jsonb(t) FROM \(table.relation) t
        """, [slot, table.rawValue])
    }
  }

  static func isMirrorReady(_ connection: PGConnection, slot: String) throws -> Bool {
    try connection.query("SELECT mirror_ready FROM sluice.stream_state WHERE slot = $1", [slot]).scalar == "t"
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

/// Processes the rows of a source that the ledger has not seen, in id order.
///
/// Linear in the rows whatever the planner's statistics say: the source is
/// read once in id order (an index scan, or one sort), and each chunk's ids
/// are looked up in the ledger by index probes (`Ledger.seen`, through
/// `sluice.ledger_seen`). An anti join of the source against the ledger,
/// planned once when the cursor opened (on an empty or ANALYZEd-empty
/// ledger: a sequential scan of the ledger per row), went quadratic as the
/// backfill itself filled the ledger.
enum Backfill {
  /// Reads with a cursor on `reader` (which may hold an imported snapshot)
  /// and applies through `processor` in batches. Returns the rows that were
  /// new to the ledger.
  /// `excludingXID`: not the rows this transaction wrote (the one that
  /// registered the source: its rows are the stream's).
  static func run(
    source: SourceMapping, reader: PGConnection, processor: BatchProcessor, batchSize: Int, stop: StopSignal?,
    excludingXID: String? = nil
  ) throws -> Int {
    let relation = PGConnection.quoteQualified(source.relation)
    let id = PGConnection.quoteIdentifier(source.idColumn)
    try reader.query(
      """
      DECLARE sluice_backfill NO SCROLL CURSOR FOR
      SELECT t.* FROM \(relation) t
      \(excludingXID.map { "WHERE t.xmin::text <> \(PGConnection.quoteLiteral($0))" } ?? "")
      ORDER BY t.\(id)
      """)
    defer { _ = try? reader.query("CLOSE sluice_backfill") }
    let before = processor.counts.values.reduce(0, +)
    while stop?.isSet != true {
      let result = try reader.query("FETCH \(batchSize) FROM sluice_backfill")
      if result.rows.isEmpty { break }
      let rows = result.rows.map { Operations.typedRow(result, $0) }
      try processor.processRows(rows.map { (source.relation, $0) })
    }
    return processor.counts.values.reduce(0, +) - before
  }
}
