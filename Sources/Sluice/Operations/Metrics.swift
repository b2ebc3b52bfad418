import SluiceCore
import Synchronization

/// The daemon's Prometheus series, rendered in the text exposition format.
public final class Metrics: Sendable {
  struct Histogram {
    let bounds: [Double]
    var counts: [Int]
    var sum = 0.0
    var count = 0

    init(_ bounds: [Double]) {
      self.bounds = bounds
      counts = Array(repeating: 0, count: bounds.count)
    }

    mutating func observe(_ value: Double) {
      for (index, bound) in bounds.enumerated() where value <= bound { counts[index] += 1 }
      sum += value
      count += 1
    }
  }

  struct State {
    var events: [Pair: Int] = [:]
    var batchSeconds = Histogram([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
    var latencySeconds = Histogram([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60])
    var lagBytes = 0
    var retainedWALBytes = 0
    var handlerErrors = 0
    var reconnects = 0
    var ignoredChanges = 0
    var streaming = false
    /// Webhook deliveries by endpoint name and result (delivered, retried, dead); attempt durations.
    var deliveries: [Delivery: Int] = [:]
    var deliverySeconds: [String: Histogram] = [:]
    var outboxPending = 0
    var outboxDead = 0
    var outboxOldestPendingSeconds = 0.0
    /// Source rows deleted by retention, by source.
    var retainedRows: [String: Int] = [:]
  }

  struct Delivery: Hashable {
    var endpoint: String
    var result: String
  }

  static let deliveryBounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

  struct Pair: Hashable {
    var type: String
    var status: String
  }

  private let state = Mutex(State())

  public init() {}

  /// One committed batch: its ledger rows by type label and status, and
  /// commit-to-applied latency for streamed events. The label is the type
  /// only when the configuration names it (`HandlerCatalog.metricLabel`), so
  /// clients cannot add series.
  func recordBatch(_ entries: [LedgerEntry], seconds: Double, now: PostgresTimestamp) {
    state.withLock { state in
      state.batchSeconds.observe(seconds)
      for entry in entries {
        state.events[Pair(type: entry.metricLabel, status: entry.status.rawValue), default: 0] += 1
        if let committed = entry.event.committedAt {
          state.latencySeconds.observe(max(0, Double(now - committed) / 1_000_000))
        }
      }
    }
  }

  /// One handler attempt failed (it is retried, or goes dead).
  func handlerFailed() { state.withLock { $0.handlerErrors += 1 } }

  func setLag(bytes: Int, retained: Int) {
    state.withLock {
      $0.lagBytes = bytes
      $0.retainedWALBytes = retained
    }
  }

  /// One delivery attempt ended. The label is the endpoint's name, never its URL.
  func deliveryFinished(endpoint: String, result: String, seconds: Double) {
    state.withLock { state in
      state.deliveries[Delivery(endpoint: endpoint, result: result), default: 0] += 1
      state.deliverySeconds[endpoint, default: Histogram(Self.deliveryBounds)].observe(seconds)
    }
  }

  func setOutbox(pending: Int, dead: Int, oldestPendingSeconds: Double) {
    state.withLock {
      $0.outboxPending = pending
      $0.outboxDead = dead
      $0.outboxOldestPendingSeconds = oldestPendingSeconds
    }
  }

  /// A retention pass deleted rows of a source (0 too: the series exists once retention ran).
  func retained(source: String, rows: Int) { state.withLock { $0.retainedRows[source, default: 0] += rows } }

  func reconnected() { state.withLock { $0.reconnects += 1 } }
  func setStreaming(_ streaming: Bool) { state.withLock { $0.streaming = streaming } }
  var lagBytes: Int { state.withLock { $0.lagBytes } }

  public func render() -> String {
    let state = state.withLock { $0 }
    var out = ""
    func header(_ name: String, _ type: String, _ help: String) {
      out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }
    header("sluice_events_total", "counter", "Events written to the ledger, by event type and status.")
    for (pair, count) in state.events.sorted(by: { ($0.key.type, $0.key.status) < ($1.key.type, $1.key.status) }) {
      out += "sluice_events_total{type=\"\(Self.escape(pair.type))\",status=\"\(pair.status)\"} \(count)\n"
    }
    func series(_ name: String, _ histogram: Histogram, labels: String = "") {
      let prefix = labels.isEmpty ? "" : labels + ","
      let braces = labels.isEmpty ? "" : "{\(labels)}"
      for (bound, count) in zip(histogram.bounds, histogram.counts) {
        out += "\(name)_bucket{\(prefix)le=\"\(bound)\"} \(count)\n"
      }
      out += "\(name)_bucket{\(prefix)le=\"+Inf\"} \(histogram.count)\n"
      out += "\(name)_sum\(braces) \(histogram.sum)\n\(name)_count\(braces) \(histogram.count)\n"
    }
    func histogram(_ name: String, _ help: String, _ histogram: Histogram) {
      header(name, "histogram", help)
      series(name, histogram)
    }
    histogram("sluice_batch_duration_seconds", "Time to apply and commit one batch.", state.batchSeconds)
    histogram(
      "sluice_commit_to_applied_seconds", "From the source transaction's commit to its event's ledger row.",
      state.latencySeconds)
    header(
      "sluice_replication_lag_bytes", "gauge", "WAL between the server's current position and the slot's confirmed one."
    )
    out += "sluice_replication_lag_bytes \(state.lagBytes)\n"
    header(
      "sluice_retained_wal_bytes", "gauge", "WAL the server keeps for the slot (current position minus restart_lsn).")
    out += "sluice_retained_wal_bytes \(state.retainedWALBytes)\n"
    header("sluice_handler_errors_total", "counter", "Handler attempts that failed (retried or dead).")
    out += "sluice_handler_errors_total \(state.handlerErrors)\n"
    header("sluice_reconnects_total", "counter", "Times the daemon reconnected after losing a connection.")
    out += "sluice_reconnects_total \(state.reconnects)\n"
    header("sluice_streaming", "gauge", "1 while this daemon streams the slot, 0 on standby.")
    out += "sluice_streaming \(state.streaming ? 1 : 0)\n"
    header(
      "sluice_outbox_deliveries_total", "counter",
      "Webhook delivery attempts by endpoint name and result (delivered, retried, dead).")
    for (key, count) in state.deliveries.sorted(by: {
      ($0.key.endpoint, $0.key.result) < ($1.key.endpoint, $1.key.result)
    }) {
      out +=
        "sluice_outbox_deliveries_total{endpoint=\"\(Self.escape(key.endpoint))\",result=\"\(key.result)\"} \(count)\n"
    }
    header("sluice_outbox_delivery_seconds", "histogram", "Time of one delivery attempt, by endpoint name.")
    for (endpoint, histogram) in state.deliverySeconds.sorted(by: { $0.key < $1.key }) {
      series("sluice_outbox_delivery_seconds", histogram, labels: "endpoint=\"\(Self.escape(endpoint))\"")
    }
    header("sluice_retention_deleted_rows_total", "counter", "Source rows deleted by retention, by source.")
    for (source, rows) in state.retainedRows.sorted(by: { $0.key < $1.key }) {
      out += "sluice_retention_deleted_rows_total{source=\"\(Self.escape(source))\"} \(rows)\n"
    }
    for (name, help, value) in [
      (
        "sluice_outbox_pending", "Webhook deliveries waiting to be sent (refreshed every 10 s).",
        "\(state.outboxPending)"
      ),
      ("sluice_outbox_dead", "Webhook deliveries that are dead (refreshed every 10 s).", "\(state.outboxDead)"),
      (
        "sluice_outbox_oldest_pending_seconds", "Age of the oldest pending webhook delivery.",
        "\(state.outboxOldestPendingSeconds)"
      ),
    ] {
      header(name, "gauge", help)
      out += "\(name) \(value)\n"
    }
    return out
  }

  static func escape(_ label: String) -> String {
    var out = ""
    for char in label {
      switch char {
      case "\\": out += "\\\\"
      case "\"": out += "\\\""
      case "\n": out += "\\n"
      default: out.append(char)
      }
    }
    return out
  }
}
