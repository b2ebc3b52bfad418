import Testing

@testable import SluiceCore

@Suite struct ConfigurationTests {
  let url = ["SLUICE_DATABASE_URL": "postgresql://sluice@db/app"]

  @Test func defaults() throws {
    let config = try Configuration(environment: url)
    #expect(config.slot == "sluice")
    #expect(config.publication == "sluice")
    #expect(config.batchSize == 1000)
    #expect(config.batchTimeoutMilliseconds == 20)
    #expect(config.maxAttempts == 5)
    #expect(config.metricsAddress == .init(host: "127.0.0.1", port: 9464))
    #expect(config.logLevel == .info)
    #expect(config.logFormat == .text)
    #expect(config.handlerTimeoutMilliseconds == 10_000)
    #expect(config.outboxMaxAttempts == 10)
    #expect(config.outboxBackoffMilliseconds == 1000)
    #expect(config.retentionIntervalSeconds == 60)
    #expect(config.ledgerPartitionEvents == 1_000_000)
    #expect(config.outcomes == false)
    #expect(config.outcomeRetentionSeconds == 7 * 86_400)
    #expect(config.outcomesPublication == nil)
  }

  @Test func readsEveryVariable() throws {
    let config = try Configuration(
      environment: url.merging([
        "SLUICE_SLOT": "s2", "SLUICE_PUBLICATION": "p2", "SLUICE_BATCH_SIZE": "50", "SLUICE_BATCH_TIMEOUT_MS": "0",
        "SLUICE_MAX_ATTEMPTS": "3", "SLUICE_METRICS_ADDR": "off", "SLUICE_LOG_LEVEL": "DEBUG",
        "SLUICE_LOG_FORMAT": "json", "SLUICE_HANDLER_TIMEOUT_MS": "1500", "SLUICE_OUTBOX_MAX_ATTEMPTS": "4",
        "SLUICE_OUTBOX_BACKOFF_MS": "250", "SLUICE_RETENTION_INTERVAL_S": "0",
        "SLUICE_LEDGER_PARTITION_EVENTS": "5000", "SLUICE_OUTCOMES": "on", "SLUICE_OUTCOME_RETENTION": "1 day 12 hours",
        "SLUICE_OUTCOMES_PUBLICATION": "powersync",
      ]) { $1 })
    #expect(config.outcomes)
    #expect(config.outcomeRetentionSeconds == 36 * 3600)
    #expect(config.outcomesPublication == "powersync")
    #expect(config.ledgerPartitionEvents == 5000)
    #expect(config.outboxMaxAttempts == 4)
    #expect(config.outboxBackoffMilliseconds == 250)
    #expect(config.retentionIntervalSeconds == 0)
    #expect(config.handlerTimeoutMilliseconds == 1500)
    #expect(config.slot == "s2")
    #expect(config.publication == "p2")
    #expect(config.batchSize == 50)
    #expect(config.batchTimeoutMilliseconds == 0)
    #expect(config.maxAttempts == 3)
    #expect(config.metricsAddress == nil)
    #expect(config.logLevel == .debug)
    #expect(config.logFormat == .json)
    let bound = try Configuration(environment: url.merging(["SLUICE_METRICS_ADDR": "0.0.0.0:9000"]) { $1 })
    #expect(bound.metricsAddress == .init(host: "0.0.0.0", port: 9000))
  }

  @Test(arguments: [
    ("SLUICE_DATABASE_URL", ""),
    ("SLUICE_SLOT", "Bad-Slot"), ("SLUICE_SLOT", String(repeating: "a", count: 64)),
    ("SLUICE_PUBLICATION", "1pub"),
    ("SLUICE_BATCH_SIZE", "0"), ("SLUICE_BATCH_SIZE", "ten"), ("SLUICE_BATCH_SIZE", "100001"),
    ("SLUICE_BATCH_TIMEOUT_MS", "-1"), ("SLUICE_MAX_ATTEMPTS", "0"), ("SLUICE_MAX_ATTEMPTS", "1.5"),
    ("SLUICE_HANDLER_TIMEOUT_MS", "0"), ("SLUICE_HANDLER_TIMEOUT_MS", "10s"),
    ("SLUICE_METRICS_ADDR", "9464"), ("SLUICE_METRICS_ADDR", "host:"), ("SLUICE_METRICS_ADDR", "host:70000"),
    ("SLUICE_LOG_LEVEL", "loud"), ("SLUICE_LOG_FORMAT", "xml"),
    ("SLUICE_OUTBOX_MAX_ATTEMPTS", "0"), ("SLUICE_OUTBOX_BACKOFF_MS", "0"), ("SLUICE_OUTBOX_BACKOFF_MS", "1s"),
    ("SLUICE_RETENTION_INTERVAL_S", "-1"), ("SLUICE_RETENTION_INTERVAL_S", "1m"),
    ("SLUICE_LEDGER_PARTITION_EVENTS", "99"), ("SLUICE_LEDGER_PARTITION_EVENTS", "1e6"),
    ("SLUICE_OUTCOMES", "maybe"), ("SLUICE_OUTCOME_RETENTION", "7"), ("SLUICE_OUTCOME_RETENTION", "7 fortnights"),
    ("SLUICE_OUTCOME_RETENTION", "30 seconds"), ("SLUICE_OUTCOME_RETENTION", "-7 days"),
    ("SLUICE_OUTCOME_RETENTION", "1.5 days"), ("SLUICE_OUTCOMES_PUBLICATION", "Power-Sync"),
    ("SLUICE_OUTCOMES_PUBLICATION", "sluice"),
  ])
  func malformedVariableIsNamed(_ variable: String, _ value: String) {
    var environment = url
    environment[variable] = value
    do {
      _ = try Configuration(environment: environment)
      Issue.record("\(variable)=\(value) accepted")
    } catch {
      #expect(error.variable == variable)
      #expect(error.description.contains(variable))
    }
  }

  @Test func intervalsReadAsPostgresWritesThem() {
    #expect(Configuration.intervalSeconds("7 days") == 7 * 86_400)
    #expect(Configuration.intervalSeconds("7days") == 7 * 86_400)
    #expect(Configuration.intervalSeconds("1 day 2 hours 3 minutes 4 seconds") == 86_400 + 7200 + 180 + 4)
    #expect(Configuration.intervalSeconds("90 MIN") == 5400)
    #expect(Configuration.intervalSeconds("2 weeks") == 14 * 86_400)
    #expect(Configuration.intervalSeconds("1 year") == 365 * 86_400)
    let overflowing = Array(repeating: "999999999 years", count: 40_000).joined(separator: " ")
    for bad in ["", "days", "7", "7 days 3", "1e3 days", "7 dayz", "-1 day", "99999999999 years", overflowing] {
      #expect(Configuration.intervalSeconds(bad) == nil, "\(bad)")
    }
  }

  @Test func missingURLIsNamed() {
    #expect(throws: ConfigurationError.self) { try Configuration(environment: [:]) }
    #expect((try? Configuration(environment: [:])) == nil)
  }

  @Test func redactsPasswords() {
    #expect(
      Configuration.redact("postgresql://app:s3cret@db:5432/x?sslmode=require")
        == "postgresql://app:***@db:5432/x?sslmode=require")
    #expect(
      Configuration.redact("postgres://app@db/x?password=s3cret&sslmode=off")
        == "postgres://app@db/x?password=***&sslmode=off")
    #expect(Configuration.redact("host=db password=s3cret user=app") == "host=db password=*** user=app")
    #expect(Configuration.redact("host=db password = 'se cr\\'et' user=app") == "host=db password=*** user=app")
    #expect(Configuration.redact("postgresql://app@db/x") == "postgresql://app@db/x")
    for text in ["postgresql://app:s3cret@db/x", "password=s3cret", "host=x password='s3cret'"] {
      #expect(!Configuration.redact(text).contains("s3cret"))
    }
  }
}

@Suite struct BackoffTests {
  @Test func growsToTheCapWithJitter() {
    var backoff = Backoff(baseMilliseconds: 100, capMilliseconds: 1000)
    #expect(backoff.next(unit: 1) == 100)
    #expect(backoff.next(unit: 1) == 200)
    #expect(backoff.next(unit: 0.5) == 200)
    #expect(backoff.next(unit: 1) == 800)
    #expect(backoff.next(unit: 1) == 1000)
    for _ in 0..<100 { #expect(backoff.next(unit: 0.999) <= 1000) }
    backoff.reset()
    #expect(backoff.next(unit: 0) == 1)
  }
}
