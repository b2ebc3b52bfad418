import Foundation
public import Logging
public import SluiceCore
import SluicePostgres
import Synchronization

/// `sluice run`: connect, take the slot, backfill if the slot is new, then
/// stream → decide → handle → acknowledge until stopped. Connection losses
/// on either connection restart the pipeline from the last confirmed position.
/// Used from one thread at a time (its run loop); Sendable so that thread can be any.
public final class Daemon: @unchecked Sendable {
  let configuration: Configuration
  let registry: HandlerRegistry
  let logger: Logger
  let stop: StopSignal
  public let metrics = DaemonMetrics()
  let notifier: SystemdNotifier
  private let health = Health()

  private var confirmed: LSN = .zero
  private let beat: Heartbeat
  /// Longest graceful stop (the command line's lifecycle enforces it): below the unit's
  /// TimeoutStopSec=30s, so the daemon, not systemd, decides.
  public static let maximumStopSeconds = 20
  private var lastLagCheck = ContinuousClock.now.advanced(by: .seconds(-60))

  public init(
    configuration: Configuration, registry: HandlerRegistry, logger: Logger, stop: StopSignal,
    environment: [String: String] = [:]
  ) {
    self.configuration = configuration
    self.registry = registry
    self.logger = logger
    self.stop = stop
    self.notifier = SystemdNotifier(environment: environment)
    self.beat = Heartbeat(notifier: notifier, health: health)
  }

  /// Runs until `stop` is set; throws for errors a retry cannot fix. A
  /// stuck batch can hold a stop: the caller bounds it (`sluice run`'s
  /// lifecycle exits 1 after `maximumStopSeconds`).
  public func run() throws {
    var server: MetricsServer?
    if let address = configuration.metricsAddress {
      let health = health
      do {
        server = try MetricsServer(address: address, metrics: metrics) { health.isFresh }
        logger.info("serving /metrics and /healthz", metadata: ["address": "\(address.host):\(address.port)"])
      } catch {
        // A standby on the same host may share the configuration: run on without metrics.
        logger.warning("metrics disabled", metadata: ["error": "\(error)"])
      }
    }
    defer { server?.stop() }
    var backoff = Backoff(baseMilliseconds: 200, capMilliseconds: 10_000)
    var attempt = 0
    while !stop.isSet {
      do {
        if attempt > 0 { metrics.reconnected() }
        attempt += 1
        try session(&backoff)
        break
      } catch let error where Self.isTransient(error) && !stop.isSet {
        metrics.setStreaming(false)
        // A slot still active for a dying walsender (a takeover) frees within moments: retry soon.
        let slotBusy = (error as? PostgresError)?.sqlState == .objectInUse
        let wait = min(backoff.next(unit: Double.random(in: 0..<1)), slotBusy ? 500 : .max)
        logger.warning("connection lost, reconnecting", metadata: ["error": "\(error)", "retry_in_ms": "\(wait)"])
        notifier.notify("STATUS=reconnecting: \(Self.oneLine(error))")
        stop.sleep(milliseconds: wait)
      } catch let error where Self.isTransient(error) || error is ApplyInterrupted {
        // Asked to stop, and the session failed meanwhile with what a restart
        // would retry (a partition, a restart), or the stop came while an
        // event waited to be retried: what committed stands, and the batch in
        // flight, never acknowledged, comes again on the next start. A stop,
        // not a failure.
        logger.warning(
          "the session failed while stopping; the batch in flight is replayed on the next start",
          metadata: ["error": "\(Self.oneLine(error))"])
        break
      }
    }
    notifier.notify("STOPPING=1\nSTATUS=stopped")  // also when stopped while reconnecting
  }

  static func oneLine(_ error: any Error) -> String {
    "\(error)".split(separator: "\n").first.map(String.init) ?? ""
  }

  /// The loop calls this whenever it goes round, and the apply path
  /// whenever work progresses (retries included): the watchdog is fed only
  /// by real progress; STATUS= is refreshed every 5 s.
  private func progressed(_ status: String) { beat.progressed(status) }

  static func isTransient(_ error: any Error) -> Bool {
    if error is ReplicationError || error is LedgerConflict || error is SlotLost || error is ServerIsStandby
      || error is PipelineDesync
    {
      return true
    }
    guard let error = error as? PostgresError else { return false }
    // The slot is still active for a dying walsender; a concurrent backfill
    // wrote the same ledger row; an operator (or a late handler-timeout
    // cancel) cancelled one of the daemon's own statements.
    return error.isConnectionLoss || error.sqlState == .objectInUse || error.sqlState == .uniqueViolation
      || error.sqlState == .queryCanceled
  }

  /// One connected session: returns on stop, throws on failure.
  private func session(_ backoff: inout Backoff) throws {
    let url = configuration.databaseURL
    let sql = try PGConnection(conninfo: url, applicationName: "sluice")
    defer { sql.close() }
    let pending = try Migrator.pending(sql)
    guard pending.isEmpty else {
      throw StartupError("the database lacks migrations \(pending.joined(separator: ", ")): run `sluice migrate`")
    }
    try Migrator.ensurePublication(sql, configuration.publication)
    if let outcomes = configuration.outcomesPublication { try Migrator.ensureOutcomesPublication(sql, outcomes) }
    if configuration.outcomes, let why = Outcomes.cannotWrite(on: sql) {
      // Before any event: every ledger write would fail, and none of them is to blame.
      throw StartupError(
        "SLUICE_OUTCOMES=on, but this role cannot write sluice.outcomes (\(why)): run sql/roles.sql again as the owner, or set SLUICE_OUTCOMES=off"
      )
    }
    if try sql.query("SELECT pg_is_in_recovery()").scalar == "t" {
      // A standby (a multi-host URL, or before a failover completes): its slots
      // cannot be written, and one being synchronized must not be dropped. Wait.
      throw ServerIsStandby(description: "the server is a standby (in recovery); waiting for a primary")
    }
    if try sql.query("SHOW server_encoding").scalar == "SQL_ASCII" {
      // Text there is bytes in no known encoding: identities could not be compared as Postgres does.
      throw StartupError("the database's encoding is SQL_ASCII: Sluice needs a database with a real encoding (UTF8)")
    }
    try checkIdentity(sql, atStart: true)
    guard try waitForLock(sql) else { return }
    // The slot's holder, and only it, sends webhook deliveries, beside the stream.
    let deliverer = try OutboxDeliverer(
      conninfo: url,
      rules: DeliveryRules(
        maxAttempts: configuration.outboxMaxAttempts, backoffMilliseconds: configuration.outboxBackoffMilliseconds),
      logger: logger, metrics: metrics)
    deliverer.start()
    defer { deliverer.stopAndWait() }
    // And only it deletes processed source rows (retention).
    let retention =
      configuration.retentionIntervalSeconds > 0
      ? RetentionWorker(
        conninfo: url, slot: configuration.slot, publication: configuration.publication,
        intervalSeconds: configuration.retentionIntervalSeconds,
        outcomes: configuration.outcomes, outcomeRetentionSeconds: configuration.outcomeRetentionSeconds,
        outboxRetentionSeconds: configuration.outboxRetentionSeconds, logger: logger, metrics: metrics) : nil
    retention?.start()
    defer { retention?.stopAndWait() }

    let stream = try ReplicationConnection(conninfo: url, applicationName: "sluice", serverSide: .stream)
    defer { stream.close() }
    let slot = configuration.slot
    let slotRow = try sql.query(
      """
      SELECT confirmed_flush_lsn::text, plugin, database, database = current_database(), wal_status
      FROM pg_replication_slots WHERE slot_name = $1
      """, [slot]
    ).rows.first
    let found = slotRow.map {
      SessionPlan.Slot(
        confirmedFlush: $0[0].flatMap { LSN($0) }, plugin: $0[1], database: $0[2], inThisDatabase: $0[3] == "t",
        walStatus: $0[4])
    }
    var start: LSN
    let processor: BatchProcessor
    switch SessionPlan.decide(slot: found, mirrorReady: try PolicyStore.isMirrorReady(sql, slot: slot), name: slot) {
    case .refuse(let why):
      throw StartupError(why)
    case .resume(let slotConfirmed):
      // Every session starts from the mirror: the policy as of the position
      // it resumes from, whoever streamed in between.
      let (policy, position) = try PolicyStore.loadFromMirror(sql, slot: slot)
      start = max(confirmed, slotConfirmed ?? .zero)
      processor = try makeProcessor(
        sql, StreamPlanner(policy: policy, catalog: registry.catalog, mirrorPosition: position, signatures: .ed25519))
      processor.ledgerHighWater = try sql.query(
        "SELECT ledger_high_water::text FROM sluice.stream_state WHERE slot = $1", [slot]
      ).scalar.flatMap { LSN($0) }
    case .recreate(let dropFirst, let warning):
      if let warning { logger.warning("\(warning)", metadata: ["slot": "\(slot)"]) }
      if dropFirst { try sql.query("SELECT pg_drop_replication_slot($1)", [slot]) }
      (start, processor) = try createSlotAndBackfill(stream, sql)
    }
    // A session that did not stop cleanly may have died of an event: the
    // next batch's events run alone, their attempts counted, until it is found.
    let unclean =
      try sql.query(
        "UPDATE sluice.stream_state SET live = true WHERE slot = $1 RETURNING (SELECT live FROM sluice.stream_state WHERE slot = $1)",
        [slot]
      ).scalar == "t"
    let countedDeath = try Ledger.tidyAttempts(on: sql)
    if unclean {
      processor.isolateNext = configuration.batchSize
      processor.uncountedCrash = !countedDeath
      logger.notice(
        "the last session did not stop cleanly; the next events run one at a time until one batch is through")
    }
    confirmed = start

    let queue = BlockingQueue<StreamItem>(
      capacity: max(2 * configuration.batchSize, 1024), byteCapacity: Self.queueBytes, cost: \.estimatedBytes)
    let published = ConfirmedPosition(start)
    let version = ReplicationConnection.protocolVersion(serverVersion: stream.connection.serverVersion)
    do {
      try stream.startReplication(
        slot: slot, start: start, protocolVersion: version, publications: [configuration.publication])
    } catch let error as PostgresError where error.sqlState == .objectNotInPrerequisiteState {
      // Invalidated between our look and START_REPLICATION: the next session recreates it.
      logger.warning("slot cannot stream: \(error)", metadata: ["slot": "\(slot)"])
      try sql.query("SELECT pg_drop_replication_slot($1)", [slot])
      throw SlotLost(description: "\(error)")
    }
    processor.synchronousStandbys(try sql.query("SHOW synchronous_standby_names").scalar ?? "")
    warnAboutConfigurationWriters(sql)
    processor.registeredSources = true  // the loop runs any backfill a previous session left pending
    let reader = StreamReader(stream: stream, queue: queue, confirmed: published, logger: logger)
    reader.start()
    logger.info(
      "streaming", metadata: ["slot": "\(slot)", "from": "\(start)", "proto_version": "\(version)"])
    backoff.reset()
    metrics.setStreaming(true)
    health.touch()
    notifier.notify("READY=1\nSTATUS=streaming slot \(slot) from \(start)")

    defer {
      waitingBackfill?.reader.close()
      waitingBackfill = nil
    }
    var ack = AckTracker(confirmed: start)
    defer { logStageTimes(queue, processor) }
    do {
      try handleLoop(queue, processor, &ack, published, deliverer)
    } catch {
      reader.stopAndWait()
      throw error
    }
    if stop.isSet { notifier.notify("STOPPING=1\nSTATUS=stopping: finishing the batch in flight") }
    reader.stopAndWait()
    if let failure = reader.failure, !stop.isSet { throw failure }
    do {
      try awaitFlush(processor, &ack, published)
    } catch {
      logger.warning("could not read the WAL flush position while stopping", metadata: ["error": "\(error)"])
    }
    reader.finish()
    confirmed = ack.confirmed
    if stop.isSet { try sql.query("UPDATE sluice.stream_state SET live = false WHERE slot = $1", [slot]) }
    logger.info("stopped", metadata: ["confirmed": "\(confirmed)"])
  }

  /// SPEC 13: refuses to run while a client could act as anyone (a
  /// 'session' source's guard missing or disabled, or a client able to
  /// TRIGGER or TRUNCATE one), at start and every few seconds while
  /// streaming; at start, also logs the other findings as warnings.
  func checkIdentity(_ sql: PGConnection, atStart: Bool) throws {
    let findings = try IdentityChecks.findings(sql)
    if let refusal = findings.first(where: { !$0.ok && $0.refusesRun }) {
      throw ConfigurationRefused(description: "\(refusal.what); fix: \(refusal.fix ?? "see sluice check")")
    }
    guard atStart else { return }
    for finding in findings where !finding.ok {
      logger.warning("\(finding.what)", metadata: finding.fix.map { ["fix": "\($0)"] } ?? [:])
    }
  }

  /// SPEC 8 / `sluice check`: anyone else who can write the rules can grant themselves anything.
  private func warnAboutConfigurationWriters(_ sql: PGConnection) {
    for relation in (try? Operations.unpublishedSources(sql, publication: configuration.publication)) ?? [] {
      logger.warning(
        "a source is not in the publication: its rows never arrive; register it again with sluice.add_source",
        metadata: ["relation": "\(relation)", "publication": "\(configuration.publication)"])
    }
    guard let writers = try? Operations.configurationWriters(sql) else { return }
    for writer in writers {
      logger.warning(
        "a role other than the owner can change the rules",
        metadata: ["table": "\(writer.table)", "role": "\(writer.role)", "privileges": "\(writer.privileges)"])
    }
  }

  /// A backfill of a source registered while streaming, waiting for the
  /// stream to pass the WAL position of its snapshot.
  private struct RegistrationBackfill {
    var relation: String
    /// The registering transaction: its own rows are the stream's.
    var xid: String?
    var reader: PGConnection
    var snapshotLSN: LSN
  }
  private var waitingBackfill: RegistrationBackfill?

  /// Sources registered while the daemon streams have rows older than their
  /// registration, which the stream never shows as events. Each is
  /// backfilled once (SPEC 8; docs/how-it-works.md, "A source registered
  /// while the daemon streams"): a snapshot is taken, and once the stream has been applied
  /// past the WAL position of that snapshot, every row committed before it
  /// that the ledger lacks, except the registering transaction's own, is a
  /// row no event covered. Steps forward each time the loop goes round.
  private func advanceBackfills(_ processor: BatchProcessor, confirmed: LSN) throws {
    if let waiting = waitingBackfill {
      guard confirmed >= waiting.snapshotLSN || stop.isSet else { return }
      waitingBackfill = nil
      defer { waiting.reader.close() }
      guard !stop.isSet else { return }
      var rows = 0
      if let source = processor.policy.source(waiting.relation) {
        let copy = try Backfill.copy(source: source, reader: waiting.reader, excludingXID: waiting.xid)
        try waiting.reader.simpleQuery("COMMIT")
        rows = try Backfill.process(
          copy, reader: waiting.reader, processor: processor, batchSize: configuration.batchSize, stop: stop,
          progress: backfillReporter())
        if stop.isSet { return }
      } else {
        try waiting.reader.simpleQuery("COMMIT")
      }
      try processor.connection.query(
        "DELETE FROM sluice.pending_backfills WHERE slot = $1 AND relation = $2",
        [configuration.slot, waiting.relation])
      logger.info(
        "backfilled a newly registered source", metadata: ["relation": "\(waiting.relation)", "rows": "\(rows)"])
      processor.registeredSources = true  // look for the next one
      return
    }
    guard processor.registeredSources else { return }
    processor.registeredSources = false
    guard
      let row = try processor.connection.query(
        "SELECT relation, before_xid::text FROM sluice.pending_backfills WHERE slot = $1 ORDER BY registered_at, relation LIMIT 1",
        [configuration.slot]
      ).rows.first, let relation = row[0]
    else { return }
    let reader = try PGConnection(conninfo: configuration.databaseURL, applicationName: "sluice-backfill")
    do {
      try reader.simpleQuery("BEGIN ISOLATION LEVEL REPEATABLE READ")
      let lsn = try reader.query("SELECT pg_current_wal_lsn()::text").scalar.flatMap { LSN($0) } ?? .zero
      waitingBackfill = RegistrationBackfill(relation: relation, xid: row[1], reader: reader, snapshotLSN: lsn)
    } catch {
      reader.close()
      throw error
    }
  }

  /// Bytes of decoded rows the reader may queue ahead of the handling stage
  /// (and the most one batch takes): memory stays bounded with large rows too.
  static let queueBytes = 8 << 20

  private func makeProcessor(_ connection: PGConnection, _ planner: StreamPlanner) throws -> BatchProcessor {
    let beat = beat
    let processor = BatchProcessor(
      connection: connection, registry: registry, planner: planner, maxAttempts: configuration.maxAttempts,
      handlerTimeoutMilliseconds: configuration.handlerTimeoutMilliseconds, slot: configuration.slot, logger: logger,
      tick: { beat.progressed(nil) })
    processor.metrics = metrics
    processor.outcomes = configuration.outcomes
    processor.heartbeat = { beat.progressed(nil) }
    processor.stop = stop
    processor.sealed = try LedgerPartitions.prepare(on: connection, logger: logger)
    processor.sealedLookups = try PGConnection(conninfo: configuration.databaseURL, applicationName: "sluice-lookups")
    processor.hotEvents = try LedgerPartitions.hotCount(on: connection)
    processor.notesReplays =
      (try connection.query("SELECT has_table_privilege('sluice.retention_replays', 'INSERT')").scalar) == "t"
    if !processor.notesReplays {
      logger.warning(
        "this role cannot INSERT into sluice.retention_replays: replays' rows are not deleted by retention (run sql/roles.sql again)"
      )
    }
    return processor
  }

  /// Seals the hot ledger partition once it holds `SLUICE_LEDGER_PARTITION_EVENTS`
  /// events (counted by the processor; the seal counts again) and opens the next.
  private func sealLedgerIfFull(_ processor: BatchProcessor) throws {
    guard processor.hotEvents >= configuration.ledgerPartitionEvents else { return }
    // Whatever happens after the seal (its filters may fail to build), the
    // lookups must know which partition is hot now: unknown if unreadable.
    defer { processor.sealed = (try? LedgerPartitions.load(on: processor.connection)) ?? .unknown }
    _ = try LedgerPartitions.sealIfFull(configuration.ledgerPartitionEvents, on: processor.connection, logger: logger)
    processor.hotEvents = try LedgerPartitions.hotCount(on: processor.connection)
  }

  /// Only one daemon streams a slot: the others wait here for its advisory lock.
  private func waitForLock(_ sql: PGConnection) throws -> Bool {
    var waiting = false
    while !stop.isSet {
      let got = try sql.query("SELECT pg_try_advisory_lock(hashtext('sluice.slot.' || $1))", [configuration.slot])
      if got.scalar == "t" { return true }
      if !waiting {
        logger.info("another daemon is streaming this slot; standing by", metadata: ["slot": "\(configuration.slot)"])
        // Ready as a standby: systemd must not time the start out while another daemon streams.
        notifier.notify("READY=1\nSTATUS=standby: another daemon streams slot \(configuration.slot)")
        waiting = true
      }
      progressed("standby: another daemon streams slot \(configuration.slot)")
      stop.sleep(milliseconds: 250)
    }
    return false
  }

  /// A backfill's progress, every 5 s: the log, `status`, and systemd's STATUS=.
  private func backfillReporter() -> BackfillReporter {
    BackfillReporter(slot: configuration.slot, logger: logger) { [beat] in beat.progressed($0) }
  }

  /// Creates the slot, then in the snapshot it exports: copies the policy to
  /// the mirror and processes the source rows the ledger has not seen.
  private func createSlotAndBackfill(_ stream: ReplicationConnection, _ sql: PGConnection) throws -> (
    LSN, BatchProcessor
  ) {
    let created = try SlotCreation(databaseURL: configuration.databaseURL, stop: stop, logger: logger).create(
      configuration.slot, on: stream)
    guard let snapshot = created.snapshotName else { throw StartupError("the slot exported no snapshot") }
    logger.info(
      "created slot", metadata: ["slot": "\(created.name)", "consistent_point": "\(created.consistentPoint)"])
    let reader = try PGConnection(conninfo: configuration.databaseURL, applicationName: "sluice-backfill")
    defer { reader.close() }
    try reader.simpleQuery("BEGIN ISOLATION LEVEL REPEATABLE READ")
    try reader.simpleQuery("SET TRANSACTION SNAPSHOT \(PGConnection.quoteLiteral(snapshot))")
    let initial = try PolicyStore.loadFromTables(reader)
    try PolicyStore.copyTablesToMirror(reader, slot: configuration.slot)
    // The snapshot's rows are copied and the snapshot let go: held through the
    // whole backfill, it kept every row version the handlers leave behind.
    // Not ready until they are processed: a crash before then starts over
    // with a new slot (a lost slot's old mirror must not count as ready).
    try PolicyStore.markNotReady(reader, slot: configuration.slot)
    let copies = try initial.sources.values.sorted(by: { $0.relation < $1.relation }).map {
      try Backfill.copy(source: $0, reader: reader)
    }
    try reader.simpleQuery("COMMIT")
    // The walsender holds the exported snapshot (and so the oldest xmin of
    // the cluster) until its connection runs another command: let it go too.
    _ = try stream.identifySystem()
    let processor = try makeProcessor(
      sql, StreamPlanner(policy: initial, catalog: registry.catalog, signatures: .ed25519))
    var total = 0
    let progress = backfillReporter()
    for copy in copies {
      total += try Backfill.process(
        copy, reader: reader, processor: processor, batchSize: configuration.batchSize, stop: nil, progress: progress)
    }
    try PolicyStore.markReady(sql, slot: configuration.slot)
    if total > 0 { logger.info("backfilled rows that predate the slot", metadata: ["rows": "\(total)"]) }
    return (created.consistentPoint, processor)
  }

  /// Takes batches off the queue and applies them until stopped. It alone
  /// owns the `AckTracker`: begins, commits and keepalives arrive through the
  /// queue in stream order, and what is durable is published for the reader.
  private func handleLoop(
    _ queue: BlockingQueue<StreamItem>, _ processor: BatchProcessor, _ ack: inout AckTracker,
    _ published: ConfirmedPosition, _ deliverer: OutboxDeliverer
  ) throws {
    let batchSize = configuration.batchSize
    let fillTimeout = Double(configuration.batchTimeoutMilliseconds) / 1000
    var lastFlushCheck = ContinuousClock.now
    func acknowledge(_ applied: BatchProcessor.Applied) {
      // A batch committed: any deliveries it queued can go now.
      if applied.completed != nil { deliverer.poke() }
      if let end = applied.completed {
        if let record = applied.commitRecord {
          ack.committedLocally(through: end, commitRecord: record)
        } else {
          ack.durable(through: end)
        }
      }
      if let flushed = applied.flushed { ack.localFlushed(flushed) }
      published.publish(ack.confirmed)
    }
    defer { if let applied = try? processor.settle() { acknowledge(applied) } }
    while !stop.isSet {
      // Asynchronous commits wait for the WAL writer's flush: look more often then.
      // A batch sent ahead is read as soon as the stream pauses.
      var (items, bytes) = queue.take(
        upTo: batchSize, bytes: Self.queueBytes,
        timeout: processor.hasUnsettled ? 0.001 : ack.awaitingFlush ? Self.flushPollSeconds : 0.1)
      if items.isEmpty || lagCheckDue {
        // The stream paused (or the lag is due): read the result of the batch sent ahead.
        acknowledge(try processor.settle())
        try checkLag(processor)
      }
      if ack.awaitingFlush, items.isEmpty,
        lastFlushCheck.duration(to: .now) >= .milliseconds(Int(Self.flushPollSeconds * 1000))
      {
        lastFlushCheck = .now
        if let flush = try processor.localFlush() { ack.localFlushed(flush) }
        published.publish(ack.confirmed)
      }
      if items.isEmpty {
        if queue.closed { return }
        if processor.hotEvents >= configuration.ledgerPartitionEvents { try sealLedgerIfFull(processor) }
        try advanceBackfills(processor, confirmed: ack.confirmed)
        progressed(status(ack))
        continue
      }
      // Mid-transaction, wait briefly for the rest rather than commit a sliver.
      let deadline = Date().addingTimeInterval(fillTimeout)
      while items.count < batchSize, bytes < Self.queueBytes, !Self.endsAtCommit(items), Date() < deadline,
        !queue.closed
      {
        let more = queue.take(
          upTo: batchSize - items.count, bytes: Self.queueBytes - bytes, timeout: max(0, deadline.timeIntervalSinceNow))
        bytes += more.bytes
        items += more.items
      }
      for item in items {
        switch item {
        case .begin: ack.began()
        case .commit(let end, _, _): ack.committed(end: end)
        case .keepalive(let walEnd): ack.keepalive(walEnd: walEnd)
        default: break
        }
      }
      let started = ContinuousClock.now
      do {
        acknowledge(try processor.process(items))
        if processor.hotEvents >= configuration.ledgerPartitionEvents {
          acknowledge(try processor.settle())
          try sealLedgerIfFull(processor)
        }
        if processor.registeredSources || waitingBackfill != nil {
          acknowledge(try processor.settle())
          try advanceBackfills(processor, confirmed: ack.confirmed)
        }
      } catch is ApplyInterrupted {
        return
      }
      // Updates, deletes and truncates of sources are not events: counted, and logged here.
      logger.debug(
        "batch",
        metadata: [
          "items": "\(items.count)", "ms": "\(Int(started.duration(to: .now).inSeconds * 1000))",
          "ignored_changes_total": "\(processor.ignoredChanges)",
        ])
      progressed(status(ack))
    }
  }

  /// How often the loop reads the server's WAL flush position while asynchronous commits wait for it.
  static let flushPollSeconds = 0.02

  /// On a graceful stop: wait (briefly) for the WAL writer to flush what was
  /// committed asynchronously, so the last acknowledgement covers it.
  private func awaitFlush(_ processor: BatchProcessor, _ ack: inout AckTracker, _ published: ConfirmedPosition) throws {
    let deadline = ContinuousClock.now.advanced(by: .seconds(2))
    while ack.awaitingFlush, ContinuousClock.now < deadline {
      if let flush = try processor.localFlush() { ack.localFlushed(flush) }
      published.publish(ack.confirmed)
      if ack.awaitingFlush { usleep(10_000) }
    }
  }

  /// At the end of a session: where the handling stage's wall time went (`scripts/bench` prints it).
  private func logStageTimes(_ queue: BlockingQueue<StreamItem>, _ processor: BatchProcessor) {
    let waits = queue.waits
    let times = processor.times
    func seconds(_ duration: Duration) -> String { String(format: "%.3f", duration.inSeconds) }
    logger.info(
      "stage times",
      metadata: [
        "batches": "\(times.batches)", "plan_s": "\(seconds(times.plan))", "apply_s": "\(seconds(times.apply))",
        "commit_wait_s": "\(seconds(processor.commitWait))", "handler_waiting_for_items_s": "\(seconds(waits.take))",
        "reader_blocked_on_full_queue_s": "\(seconds(waits.put))",
      ])
  }

  private func status(_ ack: AckTracker) -> String {
    "streaming; confirmed \(ack.confirmed); lag \(metrics.lagBytes) bytes"
  }

  private var lagCheckDue: Bool { lastLagCheck.duration(to: .now) > .seconds(5) }

  /// Every 5 s: how far the slot trails the server, and how much WAL it pins.
  private func checkLag(_ processor: BatchProcessor) throws {
    guard lagCheckDue else { return }
    lastLagCheck = .now
    let connection = processor.connection
    try checkIdentity(connection, atStart: false)
    processor.synchronousStandbys(try connection.query("SHOW synchronous_standby_names").scalar ?? "")
    // Lag in seconds as `status` counts it: the time since the daemon last
    // committed, while there is lag in bytes.
    let row = try connection.query(
      """
      SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, (pg_current_wal_lsn() - restart_lsn)::bigint,
             (confirmed_flush_lsn - '0/0')::bigint,
             CASE WHEN pg_current_wal_lsn() > confirmed_flush_lsn
                  THEN EXTRACT(epoch FROM now() - (SELECT updated_at FROM sluice.stream_state WHERE slot = $1))
                  ELSE 0 END::float8
      FROM pg_replication_slots WHERE slot_name = $1
      """, [configuration.slot]
    ).rows.first
    metrics.setLag(
      bytes: Int(row?[0] ?? "") ?? 0, retained: Int(row?[1] ?? "") ?? 0,
      confirmed: Int(row?[2] ?? "") ?? 0, seconds: Double(row?[3] ?? "") ?? 0)
    if lastLedgerSize.duration(to: .now) >= .seconds(60) {
      lastLedgerSize = .now
      metrics.setLedger(try LedgerPartitions.size(on: connection))
    }
  }
  private var lastLedgerSize = ContinuousClock.now - .seconds(3600)

  /// The batch ends at a transaction boundary (keepalives after the commit do not count).
  static func endsAtCommit(_ items: [StreamItem]) -> Bool {
    for item in items.reversed() {
      switch item {
      case .keepalive: continue
      case .commit: return true
      default: return false
      }
    }
    return false
  }
}

/// Feeds systemd's watchdog and STATUS= from any thread: the loop, the apply
/// path's retries, the handler-timeout thread while a statement runs.
final class Heartbeat: Sendable {
  private struct State {
    var lastWatchdog = ContinuousClock.now
    var lastStatus = ContinuousClock.now
    var status = "starting"
  }
  private let notifier: SystemdNotifier
  private let health: Health
  private let state = Mutex(State())

  init(notifier: SystemdNotifier, health: Health) {
    self.notifier = notifier
    self.health = health
  }

  /// Work progressed; `status` (if given) is the new STATUS= text.
  func progressed(_ status: String?) {
    health.touch()
    let message: String? = state.withLock { state in
      if let status { state.status = status }
      if let interval = notifier.watchdogInterval, state.lastWatchdog.duration(to: .now) >= interval / 3 {
        state.lastWatchdog = .now
        state.lastStatus = .now
        return "WATCHDOG=1\nSTATUS=\(state.status)"
      }
      if state.lastStatus.duration(to: .now) >= .seconds(5) {
        state.lastStatus = .now
        return "STATUS=\(state.status)"
      }
      return nil
    }
    if let message { notifier.notify(message) }
  }
}

/// When the loop last went round, for /healthz.
final class Health: Sendable {
  private let last = Mutex(ContinuousClock.now.advanced(by: .seconds(-3600)))
  func touch() { last.withLock { $0 = .now } }
  var isFresh: Bool { last.withLock { $0.duration(to: .now) < .seconds(30) } }
}

/// The database URL reached a standby: the daemon retries until it reaches a primary.
struct ServerIsStandby: Error, CustomStringConvertible {
  var description: String
}

/// The slot cannot stream (invalidated): it was dropped, and the next session recreates it.
struct SlotLost: Error, CustomStringConvertible {
  var description: String
}

public struct StartupError: Error, CustomStringConvertible {
  public var description: String
  public init(_ description: String) { self.description = description }
}
