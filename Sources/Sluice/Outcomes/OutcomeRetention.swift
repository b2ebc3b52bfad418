import SluicePostgres

/// SPEC section 12: outcomes older than `SLUICE_OUTCOME_RETENTION` are
/// deleted, in short transactions, by the daemon that holds the slot (and
/// by `sluice compact`).
///
/// The table has no index on its age (each index costs every event an
/// insert: docs/outcomes.md, Cost). Instead, as source
/// retention does (SPEC section 10), each source's ledger rows are walked in
/// commit order from where the last pass stopped
/// (`sluice.outcome_retention_state`), up to the first event younger than
/// the retention: a pass reads only what it deletes. Backfilled events (no
/// commit LSN) are walked by processing time. An outcome passed that must
/// stay a while (dead, written again by `dlq retry` lately, or held locked
/// by a client) is remembered (`sluice.outcome_retention_held`) and deleted
/// once it may go.
extension Outcomes {
  /// Rows per transaction, as for source rows.
  static let batchRows = 1000

  /// An outcome that may go: final, and written longer ago than the
  /// retention (seconds, the parameter named).
  static func expired(_ seconds: String, _ table: String = "o") -> String {
    "\(table).status <> 'dead' AND \(table).processed_at < now() - make_interval(secs => \(seconds)::float8)"
  }

  /// The sources whose outcomes are walked: the registered ones, and any
  /// walked before, and any that has outcomes (a source dropped since keeps its walk).
  static func walkedSources(on connection: PGConnection) throws -> [String] {
    // A source removed before its first walk still has outcomes: found by a
    // skip scan of the outcomes' primary key (one probe per source).
    try connection.query(
      """
      WITH RECURSIVE held(source) AS (
        SELECT min(source) FROM sluice.outcomes
        UNION ALL
        SELECT (SELECT min(o.source) FROM sluice.outcomes o WHERE o.source > held.source) FROM held
        WHERE held.source IS NOT NULL)
      SELECT relation FROM sluice.sources
      UNION SELECT source FROM sluice.outcome_retention_state
      UNION SELECT source FROM held WHERE source IS NOT NULL
      ORDER BY 1
      """
    ).rows.compactMap { $0[0] }
  }

  /// The next ledger rows of `source` past its walk (`$3`, `$4`), oldest
  /// first: event id, position, and whether older than the retention (`$2`
  /// seconds). Streamed events only up to the slot's confirmed position
  /// (`$5`), as for source rows: a source transaction larger than a batch
  /// commits in parts, and the walk must not pass a transaction whose other
  /// rows are still to come. Backfilled events keep
  /// `Retention.backfillMargin` behind, as for source rows.
  private static func nextSQL(backfilled: Bool, limit: Int) -> String {
    backfilled
      ? """
      SELECT event_id, processed_at::text AS position, true AS old, processed_at AS sort_key FROM sluice.event_log
      WHERE source = $1 AND commit_lsn IS NULL AND (processed_at, event_id) > ($3::timestamptz, $4)
        AND processed_at < now() - make_interval(secs => $2::float8) - interval '\(Retention.backfillMargin)'
      ORDER BY processed_at, event_id LIMIT \(limit)
      """
      : """
      SELECT event_id, commit_lsn::text AS position,
             coalesce(committed_at, processed_at) < now() - make_interval(secs => $2::float8) AS old,
             commit_lsn AS sort_key
      FROM sluice.event_log
      WHERE source = $1 AND commit_lsn IS NOT NULL AND (commit_lsn, event_id) > ($3::pg_lsn, $4)
        AND commit_lsn <= $5::pg_lsn
      ORDER BY commit_lsn, event_id LIMIT \(limit)
      """
  }

  private static func parameters(
    _ source: String, _ seconds: Int, _ state: [String?], backfilled: Bool, confirmed: String
  ) -> [String?] {
    backfilled
      ? [source, String(seconds), state[2], state[3]] : [source, String(seconds), state[0], state[1], confirmed]
  }

  /// The slot's confirmed position ('0/0' without a slot: only backfilled events are walked).
  static func confirmed(slot: String, on connection: PGConnection) throws -> String {
    try Retention.confirmed(connection, slot: slot) ?? "0/0"
  }

  private static func state(_ source: String, lock: Bool, on connection: PGConnection) throws -> [String?] {
    try connection.query(
      """
      SELECT through_lsn::text, through_event_id, through_processed_at::text, through_backfilled_id
      FROM sluice.outcome_retention_state WHERE source = $1 \(lock ? "FOR UPDATE" : "")
      """, [source]
    ).rows.first ?? ["0/0", "", "-infinity", ""]
  }

  /// One batch of a walk, in the caller's transaction: the walked events'
  /// outcomes that may go deleted, those that must stay remembered, the
  /// position saved. Returns (events walked, outcomes deleted).
  static func step(
    _ source: String, retentionSeconds: Int, backfilled: Bool, confirmed: String, on connection: PGConnection
  ) throws -> (Int, Int) {
    try connection.query(
      "INSERT INTO sluice.outcome_retention_state (source) VALUES ($1) ON CONFLICT DO NOTHING", [source])
    let state = try state(source, lock: true, on: connection)
    let rows = try connection.query(
      nextSQL(backfilled: backfilled, limit: batchRows),
      parameters(source, retentionSeconds, state, backfilled: backfilled, confirmed: confirmed)
    ).rows
    // Up to the first event too young (commit times follow commit order).
    let walked = rows.prefix { $0[2] == "t" }
    guard let last = walked.last, let lastID = last[0], let lastPosition = last[1] else { return (0, 0) }
    let ids = PGArray.literal(walked.compactMap { $0[0] })
    let seconds = String(retentionSeconds)
    // Rows a client holds locked are skipped (and held), never waited for.
    let deleted = try connection.query(
      """
      WITH due AS (
        SELECT o.event_id FROM sluice.outcomes o
        WHERE o.source = $1 AND o.event_id = ANY ($2::text[]) AND \(expired("$3"))
        FOR UPDATE SKIP LOCKED)
      DELETE FROM sluice.outcomes o USING due WHERE o.source = $1 AND o.event_id = due.event_id
      """, [source, ids, seconds]
    ).affectedRows
    try connection.query(
      """
      INSERT INTO sluice.outcome_retention_held (source, event_id)
      SELECT $1, o.event_id FROM sluice.outcomes o WHERE o.source = $1 AND o.event_id = ANY ($2::text[])
      ON CONFLICT DO NOTHING
      """, [source, ids])
    try connection.query(
      backfilled
        ? """
        UPDATE sluice.outcome_retention_state SET through_processed_at = $2::timestamptz, through_backfilled_id = $3
        WHERE source = $1
        """
        : "UPDATE sluice.outcome_retention_state SET through_lsn = $2::pg_lsn, through_event_id = $3 WHERE source = $1",
      [source, lastPosition, lastID])
    return (walked.count, deleted)
  }

  /// Held outcomes: those gone forgotten, those that may go now deleted (at
  /// most `batchRows`, in the caller's transaction). Returns how many went.
  static func releaseHeld(retentionSeconds: Int, on connection: PGConnection) throws -> Int {
    try connection.query(
      """
      DELETE FROM sluice.outcome_retention_held h
      WHERE NOT EXISTS (SELECT 1 FROM sluice.outcomes o WHERE o.source = h.source AND o.event_id = h.event_id)
      """)
    return try connection.query(
      """
      WITH due AS (
        SELECT o.source, o.event_id FROM sluice.outcome_retention_held h
        JOIN sluice.outcomes o ON o.source = h.source AND o.event_id = h.event_id
        WHERE \(expired("$1")) LIMIT \(batchRows) FOR UPDATE OF o SKIP LOCKED),
      gone AS (
        DELETE FROM sluice.outcomes o USING due WHERE o.source = due.source AND o.event_id = due.event_id
        RETURNING o.source, o.event_id)
      DELETE FROM sluice.outcome_retention_held h USING gone
      WHERE h.source = gone.source AND h.event_id = gone.event_id
      """, [String(retentionSeconds)]
    ).affectedRows
  }

  /// Deletes every outcome that may go, in transactions of at most
  /// `batchRows` walked events each; `pace` is called after each with the
  /// events walked so far. A dry run counts them instead. Returns how many.
  static func deleteExpired(
    retentionSeconds: Int, slot: String, on connection: PGConnection, dryRun: Bool, stop: () -> Bool = { false },
    pace: (_ walked: Int) -> Void = { _ in }
  ) throws -> Int {
    if dryRun { return try waiting(retentionSeconds: retentionSeconds, slot: slot, on: connection) }
    let confirmed = try confirmed(slot: slot, on: connection)
    func transaction<T>(_ body: () throws -> T) throws -> T { try Retention.transaction(connection, body) }
    var deleted = 0
    var walkedTotal = 0
    while !stop() {
      let released = try transaction { try releaseHeld(retentionSeconds: retentionSeconds, on: connection) }
      deleted += released
      if released < batchRows { break }
    }
    for source in try walkedSources(on: connection) {
      for backfilled in [false, true] {
        while !stop() {
          let (walked, rows) = try transaction {
            try step(
              source, retentionSeconds: retentionSeconds, backfilled: backfilled, confirmed: confirmed, on: connection)
          }
          deleted += rows
          walkedTotal += walked
          if walked < batchRows { break }
          // Paced by what is read: a first walk over a long history deletes little.
          pace(walkedTotal)
        }
      }
    }
    return deleted
  }

  /// Outcomes retention would delete now: the held ones that may go, and
  /// those of the events the next walks would pass (counted among the next
  /// 100,000 events of each source, so that `status` stays cheap whatever
  /// the backlog; a larger backlog shows as 100,000 a source).
  static func waiting(retentionSeconds: Int, slot: String, on connection: PGConnection) throws -> Int {
    let confirmed = try confirmed(slot: slot, on: connection)
    var total =
      Int(
        try connection.query(
          """
          SELECT count(*) FROM sluice.outcome_retention_held h
          JOIN sluice.outcomes o ON o.source = h.source AND o.event_id = h.event_id WHERE \(expired("$1"))
          """, [String(retentionSeconds)]
        ).scalar ?? "") ?? 0
    for source in try walkedSources(on: connection) {
      let state = try state(source, lock: false, on: connection)
      for backfilled in [false, true] {
        // The walk's prefix of old events, and their outcomes that may go.
        total +=
          Int(
            try connection.query(
              """
              WITH next AS MATERIALIZED (\(nextSQL(backfilled: backfilled, limit: 100_000))),
              walked AS (SELECT event_id, bool_and(old) OVER (ORDER BY sort_key, event_id) AS reached FROM next)
              SELECT count(*) FROM walked w JOIN sluice.outcomes o ON o.source = $1 AND o.event_id = w.event_id
              WHERE w.reached AND \(expired("$2"))
              """,
              parameters(source, retentionSeconds, state, backfilled: backfilled, confirmed: confirmed)
            ).scalar ?? "") ?? 0
      }
    }
    return total
  }
}
