import Foundation
import Sluice
import SluicePostgres
import Testing

/// packaging/prometheus and packaging/grafana, kept true: the alert rules
/// pass their promtool unit tests, `/metrics` passes `promtool check
/// metrics`, and every metric the rules and the dashboard name is one the
/// daemon exports.
@Suite(.serialized) struct MonitoringTests {
  static let packaging = ExamplesTests.repository.appendingPathComponent("packaging")

  /// promtool (Debian's prometheus package; scripts/install-deps installs it), run through a shell.
  static func promtool(_ command: String) throws -> (Int32?, String) {
    let path = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first { FileManager.default.fileExists(atPath: $0) }
    let promtool = try #require(path, "promtool is missing: run scripts/install-deps (it installs prometheus)")
    let shell = try ChildProcess("/bin/sh", ["-c", "\(promtool) \(command) 2>&1"], environment: [:])
    let status = shell.waitForExit(seconds: 60)
    return (status, shell.standardOutput)
  }

  /// The metric names a query or rule expression names (`sluice_*`, and Prometheus's own `up`).
  static func metricNames(_ expression: String) -> Set<String> {
    var names = Set<String>()
    var current = ""
    for character in expression + " " {
      if character.isLetter || character.isNumber || character == "_" {
        current.append(character)
      } else {
        if current.hasPrefix("sluice_") || current == "up" { names.insert(current) }
        current = ""
      }
    }
    return names
  }

  /// A daemon that has done everything its metrics describe (events,
  /// outcomes, a webhook delivery, retention passes), and its `/metrics`.
  static func everySeries() throws -> String {
    let receiver = try WebhookReceiver()
    let db = try WebhookTests.setUp(
      "monitoring", receiver, endpoints: [("hook", "/ok")], webhooks: [("hooked", "hook")])
    try db.sql("UPDATE sluice.sources SET retain = '1 hour'")
    try XPFixture.grant(db, ["ann"])
    let port = try freePort()
    let daemon = try startDaemon(
      db,
      [
        "SLUICE_METRICS_ADDR": "127.0.0.1:\(port)", "SLUICE_RETENTION_INTERVAL_S": "1", "SLUICE_OUTCOMES": "on",
        "SLUICE_MAX_ATTEMPTS": "1",
      ])
    defer {
      daemon.signal(SIGTERM)
      _ = daemon.waitForExit()
    }
    try XPFixture.insert(
      db, [("m1", "ann", "award", 5, nil), ("m2", "ann", "hooked", 1, nil), ("m3", "bob", "later", 1, nil)])
    var metrics = ""
    #expect(
      try eventually(30, "every series exported: \(metrics)") {
        metrics = try httpGet(port: port, path: "/metrics")
        return [
          "sluice_outbox_deliveries_total{", "sluice_retention_deleted_rows_total{", "sluice_retention_backlog_rows{",
          "sluice_outcomes_deleted_rows_total", "sluice_events_total{", "sluice_commit_to_applied_seconds_bucket",
          "sluice_confirmed_position_bytes", "sluice_replication_lag_seconds",
        ].allSatisfy(metrics.contains)
      })
    // The HTTP response's body.
    return String(metrics[(metrics.range(of: "\r\n\r\n")?.upperBound ?? metrics.startIndex)...])
  }

  /// Names of the families `/metrics` declares (`# TYPE name kind`), with
  /// the series names a histogram adds.
  static func exported(_ metrics: String) -> Set<String> {
    var names: Set<String> = ["up"]
    for line in metrics.split(separator: "\n") where line.hasPrefix("# TYPE ") {
      let parts = line.split(separator: " ")
      guard parts.count >= 4 else { continue }
      let name = String(parts[2])
      names.insert(name)
      if parts[3] == "histogram" { names.formUnion(["_bucket", "_sum", "_count"].map { name + $0 }) }
    }
    return names
  }

  @Test func metricsPassPromtoolAndEveryRuleAndPanelNamesAnExportedMetric() throws {
    let metrics = try Self.everySeries()
    let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-metrics-\(getpid()).txt")
    try metrics.write(to: file, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: file) }
    let (linted, lint) = try Self.promtool("check metrics < \(file.path)")
    #expect(linted == 0, "promtool check metrics: \(lint)")
    let exported = Self.exported(metrics)

    let rules = try String(
      contentsOf: Self.packaging.appendingPathComponent("prometheus/sluice-rules.yml"), encoding: .utf8)
    let ruleNames = rules.split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#") }
      .reduce(into: Set<String>()) { $0.formUnion(Self.metricNames(String($1))) }
    #expect(ruleNames.count >= 10, "\(ruleNames)")
    #expect(
      ruleNames.subtracting(exported).isEmpty, "rules name metrics /metrics lacks: \(ruleNames.subtracting(exported))")

    let data = try Data(contentsOf: Self.packaging.appendingPathComponent("grafana/sluice-dashboard.json"))
    let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    let panels = try #require(dashboard["panels"] as? [[String: Any]])
    #expect(panels.count >= 6)
    var queried = Set<String>()
    for panel in panels {
      let targets = try #require(panel["targets"] as? [[String: Any]], "panel \(panel["title"] ?? "?") has no queries")
      #expect(!targets.isEmpty)
      for target in targets {
        let expression = try #require(target["expr"] as? String)
        let names = Self.metricNames(expression)
        #expect(!names.isEmpty, "\(expression) names no metric")
        queried.formUnion(names)
      }
    }
    #expect(
      queried.subtracting(exported).isEmpty,
      "the dashboard queries metrics /metrics lacks: \(queried.subtracting(exported))")
    // The dashboard covers what an operator watches: throughput, lag, outcomes, latency, deliveries, retention.
    for name in [
      "sluice_events_total", "sluice_replication_lag_bytes", "sluice_replication_lag_seconds",
      "sluice_commit_to_applied_seconds_bucket", "sluice_outbox_deliveries_total",
      "sluice_retention_deleted_rows_total",
      "sluice_outcomes_retention_backlog_rows",
    ] {
      #expect(queried.contains(name), "the dashboard does not show \(name)")
    }
  }

  @Test func alertRulesPassTheirUnitTests() throws {
    let folder = Self.packaging.appendingPathComponent("prometheus").path
    let (checked, check) = try Self.promtool("check rules \(folder)/sluice-rules.yml")
    #expect(checked == 0, "promtool check rules: \(check)")
    #expect(check.contains("SUCCESS: 10 rules found"), "\(check)")
    let (tested, output) = try Self.promtool("test rules \(folder)/sluice-rules.test.yml")
    #expect(tested == 0, "promtool test rules: \(output)")
    #expect(output.contains("SUCCESS"), "\(output)")
  }
}
