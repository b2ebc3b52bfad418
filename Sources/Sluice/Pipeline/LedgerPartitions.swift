import Logging
import SluiceCore
import SluicePostgres

/// The ledger's partitions (SPEC 11, migration 007, docs/ledger.md): the filters of the sealed ones, built once and stored in
/// `sluice.ledger_partitions`, and the sealing of the hot one when it is full.
public enum LedgerPartitions {
  /// The ledger on disk: every partition's table, indexes and TOAST.
  public struct Size: Sendable {
    public var partitions: Int
    public var events: Int
    public var bytes: Int
    public var bytesPerEvent: Double? { events > 0 ? Double(bytes) / Double(events) : nil }
  }

  /// `events`: the count if the caller has it; otherwise the sealed
  /// partitions' recorded counts plus the planner's estimate of the others.
  static func size(on connection: PGConnection, events: Int? = nil) throws -> Size {
    let row = try connection.query(
      """
      SELECT count(*), coalesce(sum(pg_total_relation_size(t.relid)), 0),
             coalesce(sum(CASE WHEN p.events IS NOT NULL THEN p.events ELSE greatest(c.reltuples, 0)::bigint END), 0)
      FROM pg_partition_tree('sluice.event_log') t
      JOIN pg_class c ON c.oid = t.relid
      LEFT JOIN sluice.ledger_partitions p ON 'event_log_' || p.part = c.relname
      WHERE t.isleaf
      """
    ).rows.first
    return Size(
      partitions: Int(row?[0] ?? "") ?? 0, events: events ?? Int(row?[2] ?? "") ?? 0, bytes: Int(row?[1] ?? "") ?? 0)
  }

  /// What this process knows of the sealed partitions: their stored filters.
  /// A sealed partition without filters (or with damaged ones) makes every
  /// lookup go to every partition until the daemon builds them.
  static func load(on connection: PGConnection) throws -> SealedLedger {
    try read(on: connection).ledger
  }

  /// The stored filters, and the sealed partitions that lack usable ones.
  /// One partition's filters at a time, so that the text of only one is in
  /// memory beside the filters already read (12 partitions at once took
  /// 85 MiB at 10 million events).
  private static func read(on connection: PGConnection) throws -> (ledger: SealedLedger, unfiltered: [Int]) {
    let rows = try connection.query("SELECT part, sealed_at IS NULL FROM sluice.ledger_partitions ORDER BY part").rows
    var hot = 0
    var filters: [SealedLedger.Partition?] = []
    var unfiltered: [Int] = []
    for row in rows {
      let part = Int(row[0] ?? "") ?? 0
      if row[1] == "t" {
        hot = part
        continue
      }
      let stored = try connection.query(
        "SELECT encode(id_filter, 'hex'), encode(key_filter, 'hex') FROM sluice.ledger_partitions WHERE part = $1::int",
        [String(part)]
      ).rows.first
      guard let ids = stored?[0].flatMap(Hex.decode), let keys = stored?[1].flatMap(Hex.decode),
        let idFilter = try? LedgerFilter(bytes: ids), let keyFilter = try? LedgerFilter(bytes: keys)
      else {
        filters.append(nil)
        unfiltered.append(part)
        continue
      }
      filters.append(SealedLedger.Partition(part: part, ids: idFilter, keys: keyFilter))
    }
    return (SealedLedger(hotPart: hot, sealed: filters), unfiltered)
  }

  /// Builds the filters of every sealed partition that has none, or damaged
  /// ones (partition 0 after the upgrade from a single ledger table, or a
  /// partition whose sealer died before building them), then loads them all.
  static func prepare(on connection: PGConnection, logger: Logger) throws -> SealedLedger {
    let (ledger, unfiltered) = try read(on: connection)
    guard !unfiltered.isEmpty else { return ledger }
    for part in unfiltered {
      let started = ContinuousClock.now
      let events = try buildFilters(part, on: connection)
      logger.info(
        "built the filters of a sealed ledger partition",
        metadata: [
          "partition": "\(part)", "events": "\(events)",
          "ms": "\(Int(started.duration(to: .now).inSeconds * 1000))",
        ])
    }
    return try load(on: connection)
  }

  /// Events in the hot partition now.
  static func hotCount(on connection: PGConnection) throws -> Int {
    let hot = try connection.query("SELECT part FROM sluice.ledger_partitions WHERE sealed_at IS NULL").scalar ?? "0"
    return Int(
      try connection.query("SELECT count(*) FROM sluice.event_log WHERE part = \(Int(hot) ?? 0)").scalar ?? "0") ?? 0
  }

  /// Seals the hot partition if it holds at least `events` and builds its
  /// filters. Returns the sealed partition, or nil if it was not full yet.
  static func sealIfFull(_ events: Int, on connection: PGConnection, logger: Logger) throws -> Int? {
    let started = ContinuousClock.now
    guard let part = try connection.query("SELECT sluice.ledger_seal($1)", [String(events)]).scalar.flatMap({ Int($0) })
    else { return nil }
    let count = try buildFilters(part, on: connection)
    logger.info(
      "sealed a ledger partition",
      metadata: [
        "partition": "\(part)", "events": "\(count)", "ms": "\(Int(started.duration(to: .now).inSeconds * 1000))",
      ])
    return part
  }

  /// Reads a sealed partition's ledger ids and owned dedupe keys once, in
  /// chunks (memory stays bounded), and stores their filters. Returns its events.
  @discardableResult
  static func buildFilters(_ part: Int, on connection: PGConnection) throws -> Int {
    // Through the parent (one partition after pruning): the daemon's role has no grant on the partitions.
    let table = "sluice.event_log"
    let only = "part = \(part)"
    let events = Int(try connection.query("SELECT count(*) FROM \(table) WHERE \(only)").scalar ?? "0") ?? 0
    let owners =
      Int(
        try connection.query(
          "SELECT count(*) FROM \(table) WHERE \(only) AND dedupe_key IS NOT NULL AND status IN ('applied', 'rejected', 'dead')"
        ).scalar ?? "0") ?? 0
    var ids = LedgerFilter(expected: events)
    var keys = LedgerFilter(expected: owners)
    try connection.simpleQuery("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    do {
      try scan(
        "SELECT source, event_id, NULL FROM \(table) WHERE \(only)", on: connection
      ) { ids.insert(SealedLedger.idDigest(source: $0[0] ?? "", ledgerID: $0[1] ?? "")) }
      try scan(
        """
        SELECT event_type, actor, dedupe_key FROM \(table)
        WHERE \(only) AND dedupe_key IS NOT NULL AND status IN ('applied', 'rejected', 'dead')
        """, on: connection
      ) { keys.insert(SealedLedger.keyDigest(type: $0[0] ?? "", actor: $0[1] ?? "", key: $0[2] ?? "")) }
      try connection.simpleQuery("COMMIT")
    } catch {
      _ = try? connection.simpleQuery("ROLLBACK")
      throw error
    }
    try connection.query(
      """
      UPDATE sluice.ledger_partitions
      SET id_filter = decode($2, 'hex'), key_filter = decode($3, 'hex'), events = $4::bigint
      WHERE part = $1::int
      """, [String(part), Hex.encode(ids.bytes), Hex.encode(keys.bytes), String(events)])
    return events
  }

  private static func scan(_ query: String, on connection: PGConnection, _ each: ([String?]) -> Void) throws {
    try connection.simpleQuery("DECLARE sluice_filter NO SCROLL CURSOR FOR \(query)")
    while true {
      let rows = try connection.simpleQuery("FETCH 20000 FROM sluice_filter").rows
      if rows.isEmpty { break }
      for row in rows { each(row) }
    }
    try connection.simpleQuery("CLOSE sluice_filter")
  }
}
