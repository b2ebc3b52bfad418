import Foundation
import Logging
import SluicePostgres
import Synchronization

/// Creating a logical slot waits until every transaction that held a
/// transaction id when it began has ended, in every database of the
/// cluster. One forgotten `idle in transaction` session holds it forever.
/// This watches the wait: after 5 s, then every `reportSeconds`, it names the transactions
/// it waits for (pid, application, state, how long open), and a stop
/// cancels it instead of waiting behind it.
struct SlotCreation {
  let databaseURL: String
  let stop: StopSignal
  let logger: Logger
  var reportSeconds: Double = 15

  func create(_ name: String, on stream: ReplicationConnection) throws -> CreatedSlot {
    let cancel = CancelRequest(stream.connection)
    let done = Atomic<Bool>(false)
    let watcher = Thread { [databaseURL, stop, logger, reportSeconds] in
      let began = ContinuousClock.now
      var nextReport = began.advanced(by: .seconds(5))
      var cancelled = false
      var looker: PGConnection?
      defer { looker?.close() }
      while !done.load(ordering: .acquiring) {
        usleep(100_000)
        if stop.isSet, !cancelled, !done.load(ordering: .acquiring) {  // never a cancel for what runs after it
          cancelled = true
          cancel.send()
        }
        guard ContinuousClock.now >= nextReport, !done.load(ordering: .acquiring) else { continue }
        nextReport = ContinuousClock.now.advanced(by: .seconds(reportSeconds))
        let waited = Int(began.duration(to: .now).components.seconds)
        do {
          if looker == nil { looker = try PGConnection(conninfo: databaseURL, applicationName: "sluice-slot-watch") }
          let holders = try Self.blockingTransactions(looker!, openForAtLeast: waited)
          logger.warning(
            "creating the slot waits for transactions that were open when it began; end them, or wait",
            metadata: ["slot": "\(name)", "waited_s": "\(waited)", "waiting_for": "\(holders)"])
        } catch {
          logger.warning(
            "creating the slot waits for transactions that were open when it began",
            metadata: ["slot": "\(name)", "waited_s": "\(waited)", "error": "\(error)"])
        }
      }
    }
    watcher.name = "sluice-slot-watch"
    watcher.start()
    defer { done.store(true, ordering: .releasing) }
    return try stream.createSlot(name, temporary: false, snapshot: .export)
  }

  /// The transactions holding an id that are at least `seconds` old, oldest first.
  static func blockingTransactions(_ connection: PGConnection, openForAtLeast seconds: Int) throws -> String {
    let rows = try connection.query(
      """
      SELECT pid::text, coalesce(nullif(application_name, ''), '-'), coalesce(state, '-'), coalesce(datname, '-'),
             extract(epoch FROM now() - xact_start)::bigint::text
      FROM pg_stat_activity
      WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() AND xact_start <= now() - make_interval(secs => $1)
      ORDER BY xact_start LIMIT 5
      """, [String(seconds)]
    ).rows
    if rows.isEmpty { return "none visible (another database's prepared transaction? see pg_prepared_xacts)" }
    return rows.map { row in
      "pid \(row[0] ?? "?") (application \(row[1] ?? "-"), \(row[2] ?? "-"), database \(row[3] ?? "-"), open \(row[4] ?? "?") s)"
    }.joined(separator: "; ")
  }
}
