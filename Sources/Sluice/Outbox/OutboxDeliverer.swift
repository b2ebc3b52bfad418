import Foundation
import Logging
import SluiceCore
import SluiceHTTP
import SluicePostgres
import Synchronization

/// Sends the outbox's pending deliveries (SPEC section 9), on a thread and
/// a connection of its own beside the event stream, which it never holds
/// back. The daemon runs one while it holds the slot; across processes and
/// slots, an advisory lock lets one deliverer per database send.
///
/// Per endpoint, a `DeliveryScheduler` holds a window of pending deliveries
/// read in pages and decides which go next; libcurl's multi interface sends
/// them, many at once from this one thread. Outcomes are written back in
/// batches with `synchronous_commit = off`: an outcome lost in a crash only
/// repeats a delivery under the same webhook-id (at least once, never lost).
/// A row another session holds locked is skipped, never waited for: its
/// outcome is kept (`unwritten`) and written once the lock is gone.
final class OutboxDeliverer: @unchecked Sendable {
  struct Endpoint: Sendable {
    var url: String
    var secret: WebhookSecret?
    var timeoutMilliseconds: Int
    var maxInFlight: Int
  }

  /// A delivery on the wire.
  private struct Flight {
    var endpoint: String
    var entry: OutboxEntry
    /// Where it went: what a receiver's answer may echo (`URLRedaction`).
    var url = ""
  }

  /// An outcome to write back.
  private struct Outcome {
    var id: Int64
    var endpoint: String
    var status: String
    var attempts: Int
    var lastStatus: Int?
    var lastError: String?
    var nextAttemptAt: Int64?
  }

  private let conninfo: String
  private let rules: DeliveryRules
  private let logger: Logger
  private let metrics: DaemonMetrics
  private let transfers: HTTPTransfers
  private let stopping = Atomic<Bool>(false)
  private let poked = Atomic<Bool>(true)
  private let done = DispatchSemaphore(value: 0)
  private var started = false

  // The delivering thread's own state.
  private var endpoints: [String: Endpoint] = [:]
  private var schedulers: [String: DeliveryScheduler] = [:]
  private var flights: [Int64: Flight] = [:]
  private var outcomes: [Outcome] = []
  /// Outcomes whose rows another session held locked, by id, with when that
  /// was first found: written again each second. Meanwhile their rows are
  /// left out of every page read, so they are not sent again (a retry among
  /// them keeps its chain's place but waits until written). After
  /// `unwrittenMilliseconds`, or beyond `window` of them, the oldest are
  /// dropped: their rows are read again as the table has them, and sent again.
  private var unwritten: [Int64: (outcome: Outcome, since: Int64)] = [:]
  private var nextUnwrittenWrite: Int64 = 0
  /// Per endpoint, how far a walk from the start of the table has got
  /// (absent: not walking): it finds deliveries put back by `outbox retry`,
  /// committed out of id order by another process, or passed over by a full chain.
  private var rescans: [String: Int64] = [:]

  /// Pending deliveries held in memory per endpoint, and per actor.
  static let window = 10_000
  static let chainWindow = 64
  static let pageSize = 1000
  /// Pages a walk reads each time the loop goes round, so that it never holds deliveries up for long.
  static let rescanPagesPerRound = 5
  /// The channel `outbox retry`, `dlq retry` and `backfill` notify: look for deliveries behind the cursor.
  static let channel = "sluice_outbox"  // Operations.notifyDeliverer
  /// On a stop, how long deliveries in flight may take to finish.
  static let stopGraceMilliseconds = 2000
  /// How long an outcome whose row is locked elsewhere is kept unwritten.
  static let unwrittenMilliseconds: Int64 = 60_000

  init(conninfo: String, rules: DeliveryRules, logger: Logger, metrics: DaemonMetrics) throws {
    self.conninfo = conninfo
    self.rules = rules
    self.logger = logger
    self.metrics = metrics
    self.transfers = try HTTPTransfers()
  }

  func start() {
    started = true
    let thread = Thread { [self] in
      run()
      done.signal()
    }
    thread.name = "sluice-outbox"
    thread.start()
  }

  /// New deliveries may have committed: look now rather than at the next poll.
  func poke() {
    poked.store(true, ordering: .relaxed)
    transfers.wakeUp()
  }

  /// Stops sending; deliveries in flight get `stopGraceMilliseconds` to finish.
  func stopAndWait() {
    stopping.store(true, ordering: .relaxed)
    transfers.wakeUp()
    if started { done.wait() }
  }

  private var isStopping: Bool { stopping.load(ordering: .relaxed) }

  private func run() {
    var backoff = Backoff(baseMilliseconds: 500, capMilliseconds: 10_000)
    while !isStopping {
      do {
        try session(&backoff)
      } catch {
        transfers.cancelAll()
        flights.removeAll()
        outcomes.removeAll()
        unwritten.removeAll()
        let wait = backoff.next(unit: Double.random(in: 0..<1))
        logger.warning(
          "webhook delivery paused: lost its database connection",
          metadata: ["error": "\(error)", "retry_in_ms": "\(wait)"])
        transfers.wait(milliseconds: wait)
      }
    }
  }

  private func session(_ backoff: inout Backoff) throws {
    let sql = try PGConnection(conninfo: conninfo, applicationName: "sluice-outbox")
    defer { sql.close() }
    // A multi-host URL may reach a standby, where the outcomes could not be written.
    if try sql.query("SELECT pg_is_in_recovery()").scalar == "t" {
      throw ServerIsStandby(description: "the outbox connection reached a standby")
    }
    // A lock held by someone else on outbox rows must not stall the deliverer (nor a stop) for long.
    try sql.simpleQuery(
      "SET synchronous_commit = off; SET lock_timeout = '\(Self.lockTimeout)'; SET statement_timeout = '60s'; LISTEN \(Self.channel)"
    )
    var waiting = false
    while try sql.query("SELECT pg_try_advisory_lock(hashtext('sluice.outbox'))").scalar != "t" {
      if !waiting {
        logger.info("another daemon delivers this database's webhooks; standing by")
        waiting = true
      }
      transfers.wait(milliseconds: 1000)
      if isStopping { return }
    }
    backoff.reset()
    schedulers.removeAll()
    rescans.removeAll()
    var nextEndpointLoad: Int64 = 0
    var nextRead: Int64 = 0
    var nextRescan: Int64 = 0
    var nextGauges: Int64 = 0
    while !isStopping {
      let now = Clock.unixMilliseconds()
      // `outbox retry` notifies: an operator who fixed an endpoint's URL and
      // then retried means the new URL, even within a second of the change
      // (CI's run of WebhookTests once sent the retry to the old one).
      let notified = try sql.takeNotifications()
      if now >= nextEndpointLoad || notified {
        try loadEndpoints(sql)
        nextEndpointLoad = now + 1000
      }
      if poked.exchange(false, ordering: .relaxed) || now >= nextRead {
        try readPending(sql, now: now)
        nextRead = now + 1000
      }
      for name in schedulers.keys where rescans[name] == nil {
        if notified || now >= nextRescan || schedulers[name]?.refillWanted == true {
          schedulers[name]?.startRescan()
          rescans[name] = 0
        }
      }
      if now >= nextRescan { nextRescan = now + 60_000 }
      try walk(sql, now: now)
      if now >= nextGauges {
        try refreshGauges(sql)
        nextGauges = now + 10_000
      }
      try dispatch(sql, now: Clock.unixMilliseconds())
      let finished = transfers.perform()
      record(finished)
      try writeOutcomes(sql, now: Clock.unixMilliseconds())
      if finished.isEmpty, rescans.isEmpty {
        // Until the next read, or the next retry due at an endpoint with room for it
        // (a full endpoint is woken by its transfers finishing).
        var until = min(nextRead, nextEndpointLoad, nextRescan)
        for (name, scheduler) in schedulers {
          guard let due = scheduler.nextDue, scheduler.inFlight < (endpoints[name]?.maxInFlight ?? 0) else { continue }
          until = min(until, due)
        }
        transfers.wait(milliseconds: Int(max(1, until - Clock.unixMilliseconds())))
      }
    }
    try finishInFlight(sql)
  }

  /// On a stop: the deliveries in flight finish (up to the grace period) and their outcomes are written.
  private func finishInFlight(_ sql: PGConnection) throws {
    let deadline = Clock.unixMilliseconds() + Int64(Self.stopGraceMilliseconds)
    while !flights.isEmpty, Clock.unixMilliseconds() < deadline {
      let finished = transfers.perform()
      record(finished)
      if finished.isEmpty { transfers.wait(milliseconds: 20) }
    }
    if !flights.isEmpty {
      logger.info("stopped with deliveries in flight: they are sent again", metadata: ["count": "\(flights.count)"])
    }
    transfers.cancelAll()
    flights.removeAll()
    nextUnwrittenWrite = 0
    try writeOutcomes(sql, now: Clock.unixMilliseconds())
  }

  private func loadEndpoints(_ sql: PGConnection) throws {
    var loaded: [String: Endpoint] = [:]
    for row in try sql.query("SELECT name, url, secret, timeout_ms, max_in_flight FROM sluice.endpoints").rows {
      guard let name = row[0], let url = row[1] else { continue }
      loaded[name] = Endpoint(
        url: url, secret: row[2].flatMap(WebhookSecret.init), timeoutMilliseconds: Int(row[3] ?? "") ?? 10_000,
        maxInFlight: Int(row[4] ?? "") ?? 4)
    }
    endpoints = loaded
    for name in loaded.keys where schedulers[name] == nil {
      schedulers[name] = DeliveryScheduler(capacity: Self.window, chainCapacity: Self.chainWindow)
    }
    // An endpoint deleted: its deliveries stay pending (`outbox list` shows them).
    for name in schedulers.keys where loaded[name] == nil && schedulers[name]?.inFlight == 0 {
      schedulers[name] = nil
    }
  }

  /// Reads each endpoint's pending deliveries after its cursor, a page at a time, while its window has room.
  private func readPending(_ sql: PGConnection, now: Int64) throws {
    for name in schedulers.keys.sorted() {
      for _ in 0..<(Self.window / Self.pageSize) {
        guard let scheduler = schedulers[name], scheduler.room > 0 else { break }
        let entries = try page(sql, endpoint: name, after: scheduler.cursor)
        let reached = schedulers[name]?.add(
          entries, after: scheduler.cursor, through: entries.count < Self.pageSize ? .max : nil, now: now)
        if entries.count < Self.pageSize || reached != entries.last?.id { break }
      }
    }
  }

  /// Walks each endpoint's pending deliveries from the start, a few pages a round, up to its cursor.
  private func walk(_ sql: PGConnection, now: Int64) throws {
    for (name, from) in rescans {
      guard let cursor = schedulers[name]?.cursor else {
        rescans[name] = nil
        continue
      }
      var position = from
      var done = false
      for _ in 0..<Self.rescanPagesPerRound {
        guard schedulers[name]?.room ?? 0 > 0 else {
          done = true  // the window is full: a chain that drains asks for the next walk
          break
        }
        let entries = try page(sql, endpoint: name, after: position, through: cursor)
        let reached = schedulers[name]?.add(
          entries, after: position, through: entries.count < Self.pageSize ? cursor : nil, now: now)
        if entries.count < Self.pageSize, reached == entries.last?.id {
          done = true
          break
        }
        guard let reached, reached > position else { break }
        position = reached
      }
      rescans[name] = done ? nil : position
    }
  }

  /// One page of an endpoint's pending deliveries, in id order, but those
  /// with an unwritten outcome: to this process they are done, or held.
  private func page(_ sql: PGConnection, endpoint: String, after: Int64, through: Int64 = .max) throws
    -> [OutboxEntry]
  {
    try sql.query(
      """
      SELECT id, actor, attempts,
        CASE WHEN attempts = 0 THEN 0 ELSE (extract(epoch FROM next_attempt_at) * 1000)::bigint END
      FROM sluice.outbox WHERE status = 'pending' AND endpoint = $1 AND id > $2 AND id <= $3
        AND id <> ALL($5::bigint[])
      ORDER BY id LIMIT $4
      """,
      [endpoint, "\(after)", "\(through)", "\(Self.pageSize)", PGArray.literal(unwritten.keys.map { "\($0)" })]
    ).rows.compactMap { row in
      guard let id = row[0].flatMap({ Int64($0) }) else { return nil }
      return OutboxEntry(
        id: id, actor: row[1], attempts: Int(row[2] ?? "") ?? 0, dueAt: row[3].flatMap { Int64($0) } ?? 0)
    }
  }

  /// Starts the deliveries that may go now.
  private func dispatch(_ sql: PGConnection, now: Int64) throws {
    var taken: [Flight] = []
    for (name, endpoint) in endpoints {
      guard var scheduler = schedulers[name] else { continue }
      let free = endpoint.maxInFlight - scheduler.inFlight
      guard free > 0 else { continue }
      for entry in scheduler.take(limit: free, now: now) {
        if unwritten[entry.id] != nil {
          // A retry whose outcome is not written yet: it keeps its place, and waits.
          scheduler.finished(entry.id, attempts: entry.attempts, retryAt: now + 1000, now: now)
        } else {
          taken.append(Flight(endpoint: name, entry: entry))
        }
      }
      schedulers[name] = scheduler
    }
    guard !taken.isEmpty else { return }
    let rows = try sql.query(
      """
      SELECT id, idempotency_key, event_id, event_type, body::text FROM sluice.outbox
      WHERE id = ANY($1::bigint[]) AND status = 'pending'
      """, [PGArray.literal(taken.map { "\($0.entry.id)" })]
    ).rows
    var found: [Int64: [String?]] = [:]
    for row in rows { if let id = row[0].flatMap({ Int64($0) }) { found[id] = row } }
    let timestamp = Clock.unixMilliseconds() / 1000
    for var flight in taken {
      let id = flight.entry.id
      flight.url = endpoints[flight.endpoint]?.url ?? ""
      flights[id] = flight
      guard let row = found[id], let key = row[1], let eventID = row[2], let type = row[3], let body = row[4],
        let endpoint = endpoints[flight.endpoint]
      else {
        // Delivered, discarded or retried by someone else meanwhile.
        flights[id] = nil
        schedulers[flight.endpoint]?.finished(id, attempts: flight.entry.attempts, retryAt: nil, now: now)
        continue
      }
      let message = WebhookMessage(
        id: key, timestamp: timestamp, body: body, endpoint: flight.endpoint, eventType: type, eventID: eventID)
      guard message.hasSendableID else {
        finish(flight, .dead, status: nil, error: "webhook-id is not printable ASCII", seconds: 0)
        continue
      }
      let request = HTTPRequest(
        tag: id, url: endpoint.url, headers: message.headers(signature: endpoint.secret?.signature(of: message)),
        body: Array(body.utf8), timeoutMilliseconds: endpoint.timeoutMilliseconds)
      do {
        try transfers.start(request)
      } catch {
        finish(
          flight, rules.decide(.failed("\(error)"), attempts: flight.entry.attempts + 1, unit: .random(in: 0..<1)),
          status: nil, error: "\(error)", seconds: 0)
      }
    }
  }

  /// Decides what becomes of each finished attempt.
  private func record(_ finished: [HTTPOutcome]) {
    for outcome in finished {
      guard let flight = flights[outcome.tag] else { continue }
      let result: AttemptResult =
        if let status = outcome.status {
          .answered(status: status, retryAfterSeconds: outcome.retryAfterSeconds)
        } else {
          .failed(outcome.error ?? "no answer")
        }
      let decision = rules.decide(result, attempts: flight.entry.attempts + 1, unit: .random(in: 0..<1))
      var error = outcome.error
      if let status = outcome.status, !(200...299).contains(status) {
        // Many error pages echo the request: its URL must not reach last_error or a log line.
        let prefix = URLRedaction.redact(
          Self.printable(outcome.bodyPrefix), url: flight.url, truncated: outcome.bodyTruncated)
        error = "HTTP \(status)" + (prefix.isEmpty ? "" : ": \(prefix)")
      }
      finish(flight, decision, status: outcome.status, error: error, seconds: outcome.seconds)
    }
  }

  /// A receiver's text, fit for `last_error` and a log line: control characters (NUL among them) become spaces.
  static func printable(_ text: String) -> String {
    String(String.UnicodeScalarView(text.unicodeScalars.map { $0.properties.generalCategory == .control ? " " : $0 }))
      .trimmingCharacters(in: .whitespaces)
  }

  /// Every error text goes through `URLRedaction` before `last_error` and the
  /// log lines (a receiver's answer was already, knowing whether it was cut off).
  private func finish(_ flight: Flight, _ decision: DeliveryDecision, status: Int?, error: String?, seconds: Double) {
    let error = error.map { URLRedaction.redact($0, url: flight.url) }
    let id = flight.entry.id
    let attempts = flight.entry.attempts + 1
    let now = Clock.unixMilliseconds()
    flights[id] = nil
    let result: String
    switch decision {
    case .delivered:
      result = "delivered"
      outcomes.append(
        Outcome(
          id: id, endpoint: flight.endpoint, status: "delivered", attempts: attempts, lastStatus: status, lastError: nil
        ))
      schedulers[flight.endpoint]?.finished(id, attempts: attempts, retryAt: nil, now: now)
    case .dead:
      result = "dead"
      outcomes.append(
        Outcome(
          id: id, endpoint: flight.endpoint, status: "dead", attempts: attempts, lastStatus: status, lastError: error))
      schedulers[flight.endpoint]?.finished(id, attempts: attempts, retryAt: nil, now: now)
      logger.warning(
        "delivery dead",
        metadata: [
          "endpoint": "\(flight.endpoint)", "outbox_id": "\(id)", "attempts": "\(attempts)",
          "error": "\(error ?? "")",
        ])
    case .retry(let after):
      result = "retried"
      let at = now + Int64(after)
      outcomes.append(
        Outcome(
          id: id, endpoint: flight.endpoint, status: "pending", attempts: attempts, lastStatus: status,
          lastError: error, nextAttemptAt: at))
      schedulers[flight.endpoint]?.finished(id, attempts: attempts, retryAt: at, now: now)
      logger.debug(
        "delivery failed, will retry",
        metadata: [
          "endpoint": "\(flight.endpoint)", "outbox_id": "\(id)", "attempts": "\(attempts)",
          "retry_in_ms": "\(after)", "error": "\(error ?? "")",
        ])
    }
    metrics.deliveryFinished(endpoint: flight.endpoint, result: result, seconds: seconds)
  }

  /// The session's lock timeout: a lock held elsewhere must not stall deliveries for long.
  static let lockTimeout = "5s"

  /// Writes the outcomes gathered so far, and each second those kept
  /// unwritten, skipping rows locked elsewhere (an operator's `SELECT ...
  /// FOR UPDATE`): waiting for one would stall every delivery, and its lock
  /// timeout would reset the session. A skipped row's outcome is kept for
  /// the next try.
  private func writeOutcomes(_ sql: PGConnection, now: Int64) throws {
    var batch = outcomes
    outcomes.removeAll()
    let retrying = !unwritten.isEmpty && now >= nextUnwrittenWrite
    if retrying {
      let fresh = Set(batch.map(\.id))
      batch += unwritten.values.map(\.outcome).filter { !fresh.contains($0.id) }
      nextUnwrittenWrite = now + 1000
    }
    guard !batch.isEmpty else { return }
    let parameters = [
      PGArray.literal(batch.map { "\($0.id)" }), PGArray.literal(batch.map(\.status)),
      PGArray.literal(batch.map { "\($0.attempts)" }), PGArray.literal(batch.map { $0.lastStatus.map { "\($0)" } }),
      PGArray.literal(batch.map(\.lastError)), PGArray.literal(batch.map { $0.nextAttemptAt.map { "\($0)" } }),
    ]
    let values = """
      SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::int[], $5::text[], $6::bigint[])
        AS w(id, status, attempts, last_status, last_error, next_ms)
      """
    let update = """
      UPDATE sluice.outbox o SET status = w.status, attempts = w.attempts, last_status = w.last_status,
        last_error = w.last_error,
        next_attempt_at = coalesce(to_timestamp(w.next_ms / 1000.0), o.next_attempt_at),
        delivered_at = CASE WHEN w.status = 'delivered' THEN now() END
      """
    var skipped: Set<Int64> = []
    // Usually no row is locked elsewhere: one plain UPDATE, waiting 100 ms at most.
    // (Any other error ends the session; the next one starts with `lockTimeout` again.)
    try sql.simpleQuery("SET lock_timeout = '100ms'")
    do {
      try sql.query("\(update) FROM (\(values)) w WHERE o.id = w.id AND o.status = 'pending'", parameters)
    } catch let error as PostgresError where error.sqlState == .lockNotAvailable {
      // Some row is: update the others, and say which are still pending, unwritten.
      skipped = Set(
        try sql.query(
          """
          WITH w AS (\(values)), free AS MATERIALIZED (
            SELECT id FROM sluice.outbox WHERE id = ANY($1::bigint[]) AND status = 'pending' FOR UPDATE SKIP LOCKED
          ), written AS (
            \(update) FROM w WHERE o.id = w.id AND o.id IN (SELECT id FROM free) RETURNING o.id
          )
          SELECT id FROM sluice.outbox
          WHERE id = ANY($1::bigint[]) AND status = 'pending' AND id NOT IN (SELECT id FROM written)
          """, parameters
        ).rows.compactMap { $0[0].flatMap { Int64($0) } })
    }
    try sql.simpleQuery("SET lock_timeout = '\(Self.lockTimeout)'")
    // Written, or no longer pending (discarded, retried or delivered by someone else): done.
    var kept = retrying ? [:] : unwritten
    var newly = 0
    for outcome in batch where skipped.contains(outcome.id) {
      let since = unwritten[outcome.id]?.since
      if since == nil { newly += 1 }
      kept[outcome.id] = (outcome, since ?? now)
    }
    if newly > 0 {
      logger.warning(
        "delivery outcomes not written: their rows are locked by another session; tried again each second",
        metadata: ["count": "\(newly)"])
    }
    var dropped: [Outcome] = []
    if retrying { dropped = kept.values.filter { now - $0.since >= Self.unwrittenMilliseconds }.map(\.outcome) }
    if kept.count - dropped.count > Self.window {
      let oldest = kept.values.sorted { ($0.since, $0.outcome.id) < ($1.since, $1.outcome.id) }.map(\.outcome)
      dropped = Array(oldest.prefix(kept.count - Self.window))
    }
    for outcome in dropped {
      // Read again as the table has it: sent again under the same key.
      logger.warning(
        "delivery outcome dropped: its row stayed locked by another session; it is sent again",
        metadata: ["endpoint": "\(outcome.endpoint)", "outbox_id": "\(outcome.id)"])
      kept[outcome.id] = nil
    }
    unwritten = kept
  }

  /// Pending and dead deliveries, and the oldest pending one's age, for /metrics.
  private func refreshGauges(_ sql: PGConnection) throws {
    let row = try sql.query(
      """
      SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead'),
        coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 0)
      FROM sluice.outbox WHERE status IN ('pending', 'dead')
      """
    ).rows.first
    metrics.setOutbox(
      pending: Int(row?[0] ?? "") ?? 0, dead: Int(row?[1] ?? "") ?? 0,
      oldestPendingSeconds: Double(row?[2] ?? "") ?? 0)
  }
}
