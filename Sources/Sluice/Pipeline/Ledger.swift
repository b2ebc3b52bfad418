import SluiceCore
import SluicePostgres

/// A statement and its bound parameters.
struct Statement {
  var sql: String
  var parameters: [String?] = []
  /// It writes ledger rows: a unique violation there is a `LedgerConflict`
  /// (someone else wrote the row), not a failure of the batch.
  var writesLedger = false
}

/// The SQL of the ledger (`sluice.event_log`), the slot's stream state, the
/// policy mirror and the attempts journal: every statement the apply path
/// writes besides the handlers' own.
enum Ledger {
  /// Which of these events the ledger already has (replays, skipped
  /// silently). Each is probed in the hot partition, and in sealed ones only
  /// where `sealed`'s filters say it may be there (or `everywhere`).
  static func seen(
    _ events: [Event], sealed: SealedLedger, everywhere: Bool = false, on connection: PGConnection
  ) throws -> Set<LedgerKey> {
    var found = Set<LedgerKey>()
    for (part, group) in split(events, everywhere ? nil : sealed.hotPart, where: { everywhere || sealed.mayHold($0) }) {
      found.formUnion(try seen(group, from: part, before: nil, on: connection))
    }
    return found
  }

  /// Which of these events the sealed partitions hold: each probed only in
  /// the partitions whose filter may hold it, or in every sealed one where
  /// the filters cannot say.
  static func seenSealed(_ events: [Event], sealed: SealedLedger, on connection: PGConnection) throws -> Set<
    LedgerKey
  > {
    var anywhere: [Event] = []
    var pairs: [(event: Event, part: Int)] = []
    for event in events {
      if let parts = sealed.holders(event) { pairs += parts.map { (event, $0) } } else { anywhere.append(event) }
    }
    var found = try seen(anywhere, from: nil, before: sealed.hotPart, on: connection)
    guard !pairs.isEmpty else { return found }
    let result = try connection.query(
      "SELECT * FROM sluice.ledger_seen_in($1::text[], $2::text[], $3::bool[], $4::int[])",
      [
        PGArray.literal(pairs.map(\.event.source)), PGArray.literal(pairs.map(\.event.id)),
        PGArray.literal(pairs.map { flag($0.event) }), PGArray.literal(pairs.map { String($0.part) }),
      ])
    for row in result.rows { if let i = row[0].flatMap({ Int($0) }) { found.insert(LedgerKey(pairs[i - 1].event)) } }
    return found
  }

  private static func seen(_ events: [Event], from: Int?, before: Int?, on connection: PGConnection) throws -> Set<
    LedgerKey
  > {
    guard !events.isEmpty else { return [] }
    let result = try connection.query(
      "SELECT * FROM sluice.ledger_seen($1::text[], $2::text[], $3::bool[], $4::int, $5::int)",
      [
        PGArray.literal(events.map(\.source)), PGArray.literal(events.map(\.id)), PGArray.literal(events.map(flag)),
        from.map(String.init), before.map(String.init),
      ])
    return Set(result.rows.compactMap { $0[0].flatMap { Int($0) }.map { LedgerKey(events[$0 - 1]) } })
  }

  /// Which of these (type, actor, dedupe key) an earlier allowed event owns,
  /// and its `source/id`; sealed partitions asked as in `seen`.
  static func owners(
    _ events: [Event], sealed: SealedLedger, everywhere: Bool = false, on connection: PGConnection
  ) throws -> [DedupeKey: String] {
    var owners: [DedupeKey: String] = [:]
    let mayOwn = { (event: Event) in
      everywhere || sealed.mayOwn(type: event.type, actor: event.actor ?? "", key: event.dedupeKey ?? "")
    }
    for (part, group) in split(events, everywhere ? nil : sealed.hotPart, where: mayOwn) {
      let result = try connection.query(
        "SELECT * FROM sluice.ledger_owners($1::text[], $2::text[], $3::text[], $4::int)",
        [
          PGArray.literal(group.map(\.type)), PGArray.literal(group.map { $0.actor ?? "" }),
          PGArray.literal(group.map(\.dedupeKey)), part.map(String.init),
        ])
      for row in result.rows {
        guard let index = row[0].flatMap({ Int($0) }) else { continue }
        let event = group[index - 1]
        owners[DedupeKey(type: event.type, actor: event.actor ?? "", key: event.dedupeKey ?? "")] = row[1] ?? ""
      }
    }
    return owners
  }

  /// The events to look up in every partition (part nil) and those to look
  /// up only from the hot partition on; empty groups left out.
  private static func split(_ events: [Event], _ hot: Int?, where everywhere: (Event) -> Bool) -> [(Int?, [Event])] {
    guard let hot else { return events.isEmpty ? [] : [(nil, events)] }
    var all: [Event] = []
    var recent: [Event] = []
    for event in events {
      if everywhere(event) { all.append(event) } else { recent.append(event) }
    }
    return [(nil, all), (hot, recent)].filter { !$0.1.isEmpty }
  }

  /// All these ledger rows in one statement. Values over the limits are not
  /// stored, an over-long id is stored as its digest (`sluice.ledger_id`),
  /// rows that could not become events store no dedupe key, and a dead
  /// event stores its record for `dlq retry`. With outcomes on, the same
  /// statement writes each event's outcome (`Outcomes.with`).
  static func insert(_ entries: [LedgerEntry], outcomes: Outcomes.Mode = .off) -> Statement {
    Statement(
      sql: Outcomes.with(
        """
        INSERT INTO sluice.event_log
          (part, source, event_id, event_type, actor, dedupe_key, status, reason, attempts, commit_lsn, committed_at, event)
        SELECT (SELECT sluice.ledger_hot_part()), source, \(ledgerID("event_id", "synthetic")), event_type, actor,
               dedupe_key, status, reason, attempts, commit_lsn, committed_at, event
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::int[], $9::pg_lsn[], $10::timestamptz[], $11::jsonb[], $12::bool[])
          AS k(source, event_id, event_type, actor, dedupe_key, status, reason, attempts, commit_lsn, committed_at, event,
               synthetic)
        """, outcomes),
      parameters: columns(entries).map(\.literal), writesLedger: true)
  }

  /// After `insert` in the same transaction, for writers other than the
  /// daemon that seals: fails as a ledger conflict if a partition sealed
  /// since their lookups holds one of these events or keys
  /// (`sluice.ledger_check_sealed`).
  static func checkSealed(_ entries: [LedgerEntry]) -> Statement {
    let events = entries.map(\.event)
    let owned = entries.map { $0.ownsKey && $0.status != .denied && $0.status != .duplicate }
    return Statement(
      sql: """
        SELECT sluice.ledger_check_sealed($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[], $6::text[])
        """,
      parameters: [
        PGArray.literal(events.map(\.source)), PGArray.literal(events.map(\.id)), PGArray.literal(events.map(flag)),
        PGArray.literal(events.map { EventLimits.storable($0.type) }),
        PGArray.literal(events.map { EventLimits.storable($0.actor) }),
        PGArray.literal(zip(events, owned).map { $1 ? EventLimits.storable($0.dedupeKey) : nil }),
      ], writesLedger: true)
  }

  /// The twelve array parameters of `insert`, built in one pass over the
  /// entries (each entry read once, not once per column).
  private static func columns(_ entries: [LedgerEntry]) -> [PGArrayBuilder] {
    var columns = [PGArrayBuilder](repeating: PGArrayBuilder(capacity: 16 * entries.count + 16), count: 12)
    // Events of one source transaction share their commit time: format it once.
    var lastTime: (time: PostgresTimestamp, text: String)?
    for entry in entries {
      let event = entry.event
      columns[0].append(event.source)
      columns[1].append(event.id)
      columns[2].append(EventLimits.storable(event.type))
      columns[3].append(EventLimits.storable(event.actor))
      columns[4].append(entry.ownsKey ? EventLimits.storable(event.dedupeKey) : nil)
      columns[5].append(entry.status.rawValue)
      columns[6].append(entry.reason)
      columns[7].append(String(entry.attempts))
      columns[8].append(event.commitLSN?.description)
      var committedAt: String?
      if let time = event.committedAt {
        let text = lastTime.flatMap { $0.time == time ? $0.text : nil } ?? PostgresTime.iso8601(time)
        lastTime = (time, text)
        committedAt = text
      }
      columns[9].append(committedAt)
      columns[10].append(entry.status == .dead ? EventRecord.encode(event) : nil)
      columns[11].append(flag(event))
    }
    return columns
  }

  /// The last resort when an event's ledger row itself cannot be written:
  /// only what always fits (source, digest-safe id, status, reason; the
  /// type and actor, which the outcome needs, only where storable).
  static func minimalDead(_ event: Event, reason: String, attempts: Int, outcomes: Outcomes.Mode = .off) -> Statement {
    Statement(
      sql: Outcomes.with(
        """
        INSERT INTO sluice.event_log (source, event_id, event_type, actor, status, reason, attempts, commit_lsn)
        VALUES ($1, \(ledgerID("$2", "$6")), $7, $8, 'dead', $3, $4, $5::pg_lsn)
        """, outcomes),
      parameters: [
        event.source, event.id, String(decoding: reason.utf8.prefix(4096), as: UTF8.self), String(attempts),
        event.commitLSN?.description, flag(event), EventLimits.storable(event.type), EventLimits.storable(event.actor),
      ], writesLedger: true)
  }

  /// The slot's progress, the ledger's high water (events of later
  /// transactions cannot be replays) and the mirror's position, written
  /// with the rows they describe.
  static func state(slot: String, completed: LSN?, highWater: LSN?, mirrorLSN: LSN?) -> Statement {
    Statement(
      sql: """
        INSERT INTO sluice.stream_state (slot, mirror_ready, processed_lsn, ledger_high_water, mirror_lsn, updated_at)
        VALUES ($1, true, $2, $3, $4, now())
        ON CONFLICT (slot) DO UPDATE SET
          processed_lsn = coalesce(EXCLUDED.processed_lsn, stream_state.processed_lsn),
          ledger_high_water = GREATEST(stream_state.ledger_high_water, EXCLUDED.ledger_high_water),
          mirror_lsn = coalesce(EXCLUDED.mirror_lsn, stream_state.mirror_lsn),
          updated_at = now()
        """, parameters: [slot, completed?.description, highWater?.description, mirrorLSN?.description])
  }

  /// A source registered by a committed transaction: backfilled once, after the batch commits.
  static func pendingBackfill(_ relation: String, xid: UInt32?, slot: String) -> Statement {
    Statement(
      sql: """
        INSERT INTO sluice.pending_backfills (slot, relation, before_xid) VALUES ($1, $2, $3::xid)
        ON CONFLICT (slot, relation) DO UPDATE SET before_xid = EXCLUDED.before_xid
        """,
      parameters: [slot, relation, xid.map(String.init)])
  }

  static func mirror(_ change: Policy.Change, slot: String) -> Statement {
    switch change {
    case .upsert(let table, let key, let row):
      var writer = JSONWriter()
      writer.object(
        row.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }.map {
          ($0.key, $0.value.map(ColumnValue.text) ?? .null)
        })
      return Statement(
        sql: """
          INSERT INTO sluice.policy_mirror (slot, table_name, key, row) VALUES ($1, $2, $3, $4::jsonb)
          ON CONFLICT (slot, table_name, key) DO UPDATE SET row = EXCLUDED.row
          """, parameters: [slot, table.rawValue, key, String(decoding: writer.bytes, as: UTF8.self)])
    case .delete(let table, let key):
      return Statement(
        sql: "DELETE FROM sluice.policy_mirror WHERE slot = $1 AND table_name = $2 AND key = $3",
        parameters: [slot, table.rawValue, key])
    case .truncate(let table):
      return Statement(
        sql: "DELETE FROM sluice.policy_mirror WHERE slot = $1 AND table_name = $2", parameters: [slot, table.rawValue])
    }
  }

  /// The ledger's id for the event id at `id` (a parameter or a column), with its
  /// synthetic flag at `synthetic`: the one expression every statement uses.
  static func ledgerID(_ id: String, _ synthetic: String) -> String {
    "CASE WHEN \(synthetic)::bool THEN \(id) ELSE sluice.ledger_id(\(id)) END"
  }

  static func flag(_ event: Event) -> String { event.idIsSynthetic ? "t" : "f" }

  // MARK: - The attempts journal

  /// Counts one more attempt of an event retried alone, committed on its own
  /// (and flushed) before the attempt runs: if the attempt kills the daemon
  /// or its backend, it has been counted. Returns the attempt's number and
  /// the error the previous attempt left.
  ///
  /// `uncountedCrash`: the last session died outside any counted attempt
  /// (in a batch). The row remembers it; if this attempt then dies too, the
  /// event was what killed that session, and the next attempt adds the
  /// uncounted one, once.
  static func beginAttempt(_ event: Event, uncountedCrash: Bool, on connection: PGConnection) throws -> (
    attempt: Int, priorError: String?
  ) {
    // The statement's snapshot shows the row as it was before this upsert.
    let row = try connection.query(
      """
      WITH prior AS MATERIALIZED (
        SELECT last_error FROM sluice.attempts WHERE source = $1 AND event_id = \(ledgerID("$2", "$5")))
      INSERT INTO sluice.attempts AS a (source, event_id, attempts, last_error, in_flight, uncounted_crash)
      VALUES ($1, \(ledgerID("$2", "$5")), 1, $3, true, $4::bool)
      ON CONFLICT (source, event_id) DO UPDATE
        SET attempts = a.attempts + 1 + CASE WHEN a.uncounted_crash AND a.in_flight THEN 1 ELSE 0 END,
            last_error = EXCLUDED.last_error, in_flight = true, uncounted_crash = false, updated_at = now()
      RETURNING a.attempts, (SELECT last_error FROM prior)
      """,
      [
        event.source, event.id, "the daemon or its database session died while handling this event",
        uncountedCrash ? "t" : "f", flag(event),
      ]
    ).rows.first
    return (Int(row?[0] ?? "") ?? 1, row?[1] ?? nil)
  }

  /// What the attempt that just failed failed with (it ended: not in flight).
  static func failAttempt(_ event: Event, error: String, on connection: PGConnection) throws {
    try connection.query(
      """
      UPDATE sluice.attempts SET last_error = $3, in_flight = false, updated_at = now()
      WHERE source = $1 AND event_id = \(ledgerID("$2", "$4"))
      """, [event.source, event.id, error, flag(event)])
  }

  /// Written in the transaction that gives the event its ledger row.
  static func endAttempts(_ event: Event) -> Statement {
    Statement(
      sql: "DELETE FROM sluice.attempts WHERE source = $1 AND event_id = \(ledgerID("$2", "$3"))",
      parameters: [event.source, event.id, flag(event)])
  }

  /// At a session's start: forgets attempts of events that have their ledger
  /// row (a later batch applied them), and says whether an attempt was in
  /// flight when the last session ended (then that death was counted).
  static func tidyAttempts(on connection: PGConnection) throws -> Bool {
    try connection.query(
      "DELETE FROM sluice.attempts a USING sluice.event_log l WHERE l.source = a.source AND l.event_id = a.event_id")
    return try connection.query("SELECT EXISTS (SELECT 1 FROM sluice.attempts WHERE in_flight)").scalar == "t"
  }
}
