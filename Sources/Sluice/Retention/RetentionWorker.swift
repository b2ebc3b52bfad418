import Foundation
import Logging
import SluiceCore
import SluicePostgres

/// Runs a retention pass every `SLUICE_RETENTION_INTERVAL_S` seconds, on a
/// thread and connection of its own, while the daemon holds the slot (a
/// standby never deletes). Its deletes reach the stream as deletes of
/// source rows, which are not events.
final class RetentionWorker: @unchecked Sendable {
  private let conninfo: String
  private let slot: String
  private let publication: String
  private let intervalSeconds: Int
  private let outcomeRetentionSeconds: Int
  private let outboxRetentionSeconds: Int
  private let outcomes: Bool
  private let logger: Logger
  private let metrics: DaemonMetrics
  private let stop = StopSignal()
  private let done = DispatchSemaphore(value: 0)
  /// The daemon's passes delete at most this many rows a second: every
  /// deleted row is WAL the walsender decodes before the live events behind
  /// it (`sluice compact` is not paced).
  static let maxRowsPerSecond = 20_500

  init(
    conninfo: String, slot: String, publication: String, intervalSeconds: Int, outcomes: Bool,
    outcomeRetentionSeconds: Int, outboxRetentionSeconds: Int, logger: Logger, metrics: DaemonMetrics
  ) {
    self.outboxRetentionSeconds = outboxRetentionSeconds
    self.conninfo = conninfo
    self.slot = slot
    self.publication = publication
    self.intervalSeconds = intervalSeconds
    self.outcomeRetentionSeconds = outcomeRetentionSeconds
    self.outcomes = outcomes
    self.logger = logger
    self.metrics = metrics
  }

  func start() {
    let thread = Thread { [self] in
      run()
      done.signal()
    }
    thread.name = "sluice-retention"
    thread.start()
  }

  func stopAndWait() {
    stop.set()
    done.wait()
  }

  private func run() {
    while stop.sleep(milliseconds: intervalSeconds * 1000) {
      do {
        let connection = try PGConnection(conninfo: conninfo, applicationName: "sluice-retention")
        defer { connection.close() }
        // A lock held by someone else must not stall the pass (nor the daemon's stop) for long.
        try connection.simpleQuery("SET lock_timeout = '5s'; SET statement_timeout = '60s'")
        let passes = try Retention.pass(
          connection, slot: slot, publication: publication, dryRun: false, stop: { stop.isSet }
        ) {
          rows, seconds in
          let ahead = Double(rows) / Double(Self.maxRowsPerSecond) - seconds
          if ahead > 0 { stop.sleep(milliseconds: Int(ahead * 1000)) }
        }
        for waiting in try Retention.waiting(connection, slot: slot, publication: publication) {
          metrics.setRetentionBacklog(source: waiting.relation, rows: waiting.rows)
        }
        for outcome in passes {
          metrics.retained(source: outcome.relation, rows: outcome.rows)
          if let kept = outcome.kept {
            logger.warning(
              "retention left rows in place", metadata: ["source": "\(outcome.relation)", "why": "\(kept)"])
          }
          if outcome.rows > 0 {
            logger.info(
              "retention deleted processed rows",
              metadata: [
                "source": "\(outcome.relation)", "rows": "\(outcome.rows)",
                "seconds": "\(String(format: "%.3f", outcome.seconds))",
              ])
          }
        }
      } catch {
        logger.warning("retention pass failed; trying again next interval", metadata: ["error": "\(error)"])
      }
      // Delivered webhooks on their own, as outcomes below.
      do {
        let connection = try PGConnection(conninfo: conninfo, applicationName: "sluice-retention")
        defer { connection.close() }
        try connection.simpleQuery("SET lock_timeout = '5s'; SET statement_timeout = '60s'")
        let started = ContinuousClock.now
        let deleted =
          try !OutboxRetention.mayDelete(on: connection)
          ? 0
          : OutboxRetention.deleteDelivered(
            retentionSeconds: outboxRetentionSeconds, on: connection, dryRun: false, stop: { stop.isSet }
          ) { rows in
            let ahead = Double(rows) / Double(Self.maxRowsPerSecond) - started.duration(to: .now).inSeconds
            if ahead > 0 { stop.sleep(milliseconds: Int(ahead * 1000)) }
          }
        metrics.outboxDeleted(rows: deleted)
        if deleted > 0 {
          logger.info("retention deleted delivered webhooks", metadata: ["rows": "\(deleted)"])
        }
      } catch {
        logger.warning("outbox retention failed; trying again next interval", metadata: ["error": "\(error)"])
      }
      // Outcomes on their own: a source whose pass failed does not hold them up.
      do {
        let connection = try PGConnection(conninfo: conninfo, applicationName: "sluice-retention")
        defer { connection.close() }
        try connection.simpleQuery("SET lock_timeout = '5s'; SET statement_timeout = '60s'")
        // Off, and never granted them (an install from before outcomes): nothing to do.
        if outcomes || Outcomes.mayTouch("DELETE", on: connection) { try expireOutcomes(connection) }
      } catch {
        logger.warning("outcome retention failed; trying again next interval", metadata: ["error": "\(error)"])
      }
    }
  }

  /// Outcomes older than `SLUICE_OUTCOME_RETENTION` go (SPEC section 12),
  /// paced like source rows; then the gauge says how many are still waiting.
  private func expireOutcomes(_ connection: PGConnection) throws {
    let started = ContinuousClock.now
    let deleted = try Outcomes.deleteExpired(
      retentionSeconds: outcomeRetentionSeconds, slot: slot, on: connection, dryRun: false, stop: { stop.isSet }
    ) { walked in
      let ahead = Double(walked) / Double(Self.maxRowsPerSecond) - started.duration(to: .now).inSeconds
      if ahead > 0 { stop.sleep(milliseconds: Int(ahead * 1000)) }
    }
    metrics.outcomesExpired(deleted: deleted)
    metrics.setOutcomesWaiting(
      try Outcomes.waiting(retentionSeconds: outcomeRetentionSeconds, slot: slot, on: connection))
    if deleted > 0 {
      logger.info(
        "retention deleted old outcomes",
        metadata: ["rows": "\(deleted)", "seconds": "\(String(format: "%.3f", started.duration(to: .now).inSeconds))"])
    }
  }
}
