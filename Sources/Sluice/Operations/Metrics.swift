import CoreMetrics
public import Prometheus
import SluiceCore
import Synchronization

/// The daemon's Prometheus series, kept in a swift-prometheus registry of
/// its own and rendered in the text exposition format by `/metrics`, after
/// them the metrics handlers record through the standard swift-metrics API
/// (`Counter(label:)`, `Timer(label:)`, …), once `bootstrapHandlerMetrics()`
/// has run (`sluice run` does).
public final class DaemonMetrics: Sendable {
  /// The daemon's own series: one registry per daemon, so two daemons in
  /// one process (tests) never mix their figures.
  public let registry = PrometheusCollectorRegistry()

  private let batchSeconds: ValueHistogram
  private let latencySeconds: ValueHistogram
  private let lagBytesGauge: Prometheus.Gauge
  private let retainedWALBytes: Prometheus.Gauge
  private let lagSeconds: Prometheus.Gauge
  private let confirmedPosition: Prometheus.Gauge
  private let ledgerBytes: Prometheus.Gauge
  private let ledgerBytesPerEvent: Prometheus.Gauge
  private let handlerErrors: Prometheus.Counter
  private let reconnects: Prometheus.Counter
  private let streaming: Prometheus.Gauge
  private let outboxPending: Prometheus.Gauge
  private let outboxDead: Prometheus.Gauge
  private let outboxOldestPending: Prometheus.Gauge
  private let outcomesDeleted: Prometheus.Counter
  private let outboxDeletedRows: Prometheus.Counter
  private let outcomesWaiting: Prometheus.Gauge
  /// The last lag figure, for `STATUS=` (a gauge cannot be read back).
  private let lastLagBytes = Atomic<Int>(0)

  static let batchBounds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
  static let latencyBounds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
  static let deliveryBounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

  /// `sluice_<name>_<unit>`.
  private static func name(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(namespace: "sluice", metricName: name, unitName: unit, helpText: help)
  }

  static var events: MetricNameDescriptor {
    name("events", "total", "Events written to the ledger, by event type and status.")
  }
  static var deliveries: MetricNameDescriptor {
    name(
      "outbox_deliveries", "total", "Webhook delivery attempts by endpoint name and result (delivered, retried, dead).")
  }
  static var deliverySeconds: MetricNameDescriptor {
    name("outbox_delivery", "seconds", "Time of one delivery attempt, by endpoint name.")
  }
  static var retention: MetricNameDescriptor {
    name("retention_deleted_rows", "total", "Source rows deleted by retention, by source.")
  }
  static var retentionBacklog: MetricNameDescriptor {
    name(
      "retention_backlog", "rows",
      "Processed source rows old enough for retention to delete, by source, counted after each pass.")
  }

  public init() {
    batchSeconds = registry.makeValueHistogram(
      descriptor: Self.name("batch_duration", "seconds", "Time to apply and commit one batch."),
      buckets: Self.batchBounds)
    latencySeconds = registry.makeValueHistogram(
      descriptor: Self.name(
        "commit_to_applied", "seconds", "From the source transaction's commit to its event's ledger row."),
      buckets: Self.latencyBounds)
    lagBytesGauge = registry.makeGauge(
      descriptor: Self.name(
        "replication_lag", "bytes", "WAL between the server's current position and the slot's confirmed one."))
    retainedWALBytes = registry.makeGauge(
      descriptor: Self.name(
        "retained_wal", "bytes", "WAL the server keeps for the slot (current position minus restart_lsn)."))
    lagSeconds = registry.makeGauge(
      descriptor: Self.name(
        "replication_lag", "seconds", "Time since the daemon last committed, while the slot lags (0 when caught up)."))
    confirmedPosition = registry.makeGauge(
      descriptor: Self.name(
        "confirmed_position", "bytes",
        "The slot's confirmed_flush_lsn as a byte offset: it stands still when nothing is acknowledged."))
    ledgerBytes = registry.makeGauge(
      descriptor: Self.name("ledger", "bytes", "The ledger on disk: every partition's table, indexes and TOAST."))
    ledgerBytesPerEvent = registry.makeGauge(
      descriptor: Self.name(
        "ledger_bytes_per_event", "", "The ledger's disk divided by the events it holds (refreshed every minute)."))
    handlerErrors = registry.makeCounter(
      descriptor: Self.name("handler_errors", "total", "Handler attempts that failed (retried or dead)."))
    reconnects = registry.makeCounter(
      descriptor: Self.name("reconnects", "total", "Times the daemon reconnected after losing a connection."))
    streaming = registry.makeGauge(
      descriptor: Self.name("streaming", "", "1 while this daemon streams the slot, 0 on standby."))
    outboxPending = registry.makeGauge(
      descriptor: Self.name("outbox_pending", "", "Webhook deliveries waiting to be sent (refreshed every 10 s)."))
    outboxDead = registry.makeGauge(
      descriptor: Self.name("outbox_dead", "", "Webhook deliveries that are dead (refreshed every 10 s)."))
    outboxOldestPending = registry.makeGauge(
      descriptor: Self.name("outbox_oldest_pending", "seconds", "Age of the oldest pending webhook delivery."))
    outcomesDeleted = registry.makeCounter(
      descriptor: Self.name(
        "outcomes_deleted_rows", "total", "Outcome rows deleted by retention (older than SLUICE_OUTCOME_RETENTION)."))
    outboxDeletedRows = registry.makeCounter(
      descriptor: Self.name(
        "outbox_deleted_rows", "total",
        "Delivered webhook rows deleted by retention (delivered longer ago than SLUICE_OUTBOX_RETENTION)."))
    outcomesWaiting = registry.makeGauge(
      descriptor: Self.name(
        "outcomes_retention_backlog", "rows", "Outcome rows old enough to delete, counted after each retention pass."))
  }

  /// One committed batch: its ledger rows by type label and status, and
  /// commit-to-applied latency for streamed events. The label is the type
  /// only when the configuration names it (`HandlerCatalog.metricLabel`), so
  /// clients cannot add series.
  func recordBatch(_ entries: [LedgerEntry], seconds: Double, now: PostgresTimestamp) {
    // Events first, then latencies: a scrape in between never shows more
    // latency observations than counted events.
    var counts: [Pair: Int] = [:]
    for entry in entries { counts[Pair(type: entry.metricLabel, status: entry.status.rawValue), default: 0] += 1 }
    for (pair, count) in counts {
      registry.makeCounter(descriptor: Self.events, labels: [("type", pair.type), ("status", pair.status)])
        .increment(by: Int64(count))
    }
    for entry in entries {
      if let committed = entry.event.committedAt {
        latencySeconds.record(max(0, Double(now - committed) / 1_000_000))
      }
    }
    batchSeconds.record(seconds)
  }

  private struct Pair: Hashable {
    var type: String
    var status: String
  }

  /// One handler attempt failed (it is retried, or goes dead).
  func handlerFailed() { handlerErrors.increment() }

  func setLedger(_ size: LedgerPartitions.Size) {
    ledgerBytes.set(Int64(size.bytes))
    ledgerBytesPerEvent.set(size.bytesPerEvent ?? 0)
  }

  func setLag(bytes: Int, retained: Int, confirmed: Int, seconds: Double) {
    lastLagBytes.store(bytes, ordering: .relaxed)
    lagBytesGauge.set(Int64(bytes))
    retainedWALBytes.set(Int64(retained))
    confirmedPosition.set(Double(confirmed))
    lagSeconds.set(seconds)
  }

  /// One delivery attempt ended. The label is the endpoint's name, never its URL.
  func deliveryFinished(endpoint: String, result: String, seconds: Double) {
    registry.makeCounter(descriptor: Self.deliveries, labels: [("endpoint", endpoint), ("result", result)]).increment()
    registry.makeValueHistogram(
      descriptor: Self.deliverySeconds, labels: [("endpoint", endpoint)], buckets: Self.deliveryBounds
    ).record(seconds)
  }

  func setOutbox(pending: Int, dead: Int, oldestPendingSeconds: Double) {
    outboxPending.set(Int64(pending))
    outboxDead.set(Int64(dead))
    outboxOldestPending.set(oldestPendingSeconds)
  }

  /// A retention pass deleted rows of a source (0 too: the series exists once retention ran).
  func retained(source: String, rows: Int) {
    registry.makeCounter(descriptor: Self.retention, labels: [("source", source)]).increment(by: Int64(rows))
  }

  /// After a retention pass: per source, the rows it may delete now (its backlog).
  func setRetentionBacklog(source: String, rows: Int) {
    registry.makeGauge(descriptor: Self.retentionBacklog, labels: [("source", source)]).set(Int64(rows))
  }

  func outcomesExpired(deleted: Int) { outcomesDeleted.increment(by: Int64(deleted)) }
  func outboxDeleted(rows: Int) { outboxDeletedRows.increment(by: Int64(rows)) }
  func setOutcomesWaiting(_ rows: Int) { outcomesWaiting.set(Int64(rows)) }

  func reconnected() { reconnects.increment() }
  func setStreaming(_ on: Bool) { streaming.set(to: on ? 1 : 0) }
  var lagBytes: Int { lastLagBytes.load(ordering: .relaxed) }

  /// The daemon's series, then the handlers' (if bootstrapped).
  public func render() -> String {
    var buffer: [UInt8] = []
    buffer.reserveCapacity(8192)
    registry.emit(into: &buffer)
    Self.handlerRegistry.withLock { $0 }?.emit(into: &buffer)
    return String(decoding: buffer, as: UTF8.self)
  }

  private static let handlerRegistry = Mutex<PrometheusCollectorRegistry?>(nil)

  /// Makes the swift-metrics API (`import Metrics`: `Counter`, `Timer`,
  /// `Recorder`, `Gauge`) record into a registry that `/metrics` shows
  /// after the daemon's own series. Once per process; a process that
  /// bootstrapped another metrics backend first keeps it (swift-metrics
  /// allows one), and handler metrics then go there.
  public static func bootstrapHandlerMetrics() {
    handlerRegistry.withLock { registry in
      guard registry == nil, MetricsSystem.factory is NOOPMetricsHandler else { return }
      let created = PrometheusCollectorRegistry()
      MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: created))
      registry = created
    }
  }
}
