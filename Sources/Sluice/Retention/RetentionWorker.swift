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
  private let intervalSeconds: Int
  private let logger: Logger
  private let metrics: Metrics
  private let stop = StopSignal()
  private let done = DispatchSemaphore(value: 0)

  init(conninfo: String, slot: String, intervalSeconds: Int, logger: Logger, metrics: Metrics) {
    self.conninfo = conninfo
    self.slot = slot
    self.intervalSeconds = intervalSeconds
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
        for outcome in try Retention.pass(connection, slot: slot, dryRun: false, stop: { stop.isSet }) {
          metrics.retained(source: outcome.relation, rows: outcome.rows)
          if outcome.rows > 0 {
            logger.info(
              "retention deleted processed rows",
              metadata: ["source": "\(outcome.relation)", "rows": "\(outcome.rows)"])
          }
        }
      } catch {
        logger.warning("retention pass failed; trying again next interval", metadata: ["error": "\(error)"])
      }
    }
  }
}
