import ArgumentParser
import Foundation
import Glibc
import Logging
public import Sluice
import SluiceCore
import Synchronization

/// The `sluice` command line, for any set of Swift handlers. A daemon of
/// your own is `SluiceCLI.main(handlers: [MyHandler()])`.
public enum SluiceCLI {
  static let registry = Mutex(HandlerRegistry())

  /// Parses the arguments and runs the command with these handlers compiled in.
  public static func main(handlers: [any EventHandler]) -> Never {
    registry.withLock { $0 = HandlerRegistry(handlers) }
    SluiceCommand.main()
    exit(0)
  }

  static var handlers: HandlerRegistry { registry.withLock { $0 } }
}

struct SluiceCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "sluice",
    abstract: "Turns rows untrusted clients write into Postgres into trusted, exactly-once server-side effects.",
    discussion: "Configured by SLUICE_* environment variables (see systemd/sluice.env.example).",
    version: SluiceVersion.current,
    subcommands: [
      RunCommand.self, MigrateCommand.self, StatusCommand.self, CheckCommand.self, DeadLetterCommand.self,
      BackfillCommand.self, TailCommand.self, OutboxCommand.self, CompactCommand.self,
    ]
  )
}

/// Reads the configuration or exits 78 (EX_CONFIG) with one line naming the variable.
func loadConfiguration() -> Configuration {
  do {
    let configuration = try Configuration(environment: ProcessInfo.processInfo.environment)
    SluiceLogHandler.bootstrap(level: configuration.logLevel, format: configuration.logFormat)
    return configuration
  } catch {
    printError("sluice: \(error)")
    exit(78)
  }
}

/// Runs `body`, printing a failure as one line and exiting 1.
func reportingFailure<T>(_ command: String, _ body: () throws -> T) throws -> T {
  do {
    return try body()
  } catch {
    printError("sluice \(command): \(error)")
    throw ExitCode(1)
  }
}

struct RunCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "run",
    abstract: "The daemon: stream the slot, check permissions, run handlers, acknowledge.",
    discussion: """
      Creates the slot and publication if missing; a new slot is first backfilled with the source rows \
      that predate it. SIGTERM or SIGINT finishes the batch in flight, acknowledges it and exits 0.
      """)

  func run() throws {
    let config = loadConfiguration()
    boundMallocArenas()
    DaemonMetrics.bootstrapHandlerMetrics()
    let logger = Logger(label: "sluice")
    logger.info(
      "starting",
      metadata: [
        "database": "\(config.redactedDatabaseURL)", "slot": "\(config.slot)", "version": "\(SluiceVersion.current)",
      ])
    try Lifecycle.run("sluice-daemon", logger: logger, stopLimitSeconds: Daemon.maximumStopSeconds) { stop in
      let daemon = Daemon(
        configuration: config, registry: SluiceCLI.handlers, logger: logger, stop: stop,
        environment: ProcessInfo.processInfo.environment)
      try reportingFailure("run") {
        do {
          try daemon.run()
        } catch let refused as ConfigurationRefused {
          // SPEC 13: clients could act as anyone. RestartPreventExitStatus=78: no restart loop.
          printError("sluice run: \(refused)")
          Glibc.exit(78)
        }
      }
    }
    // Stopped cleanly: the daemon's connections are closed and its threads
    // joined. Exit without exit-time teardown, which runs while the async
    // runtime's worker threads may still be winding down: CI's soak once saw
    // a clean SIGTERM end in SIGABRT with only libc and libdispatch frames,
    // which that race would explain (not reproduced here).
    fflush(nil)  // every stream: stdout and stderr
    _exit(0)
  }
}

struct MigrateCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "migrate", abstract: "Install or upgrade Sluice's schema and publication (a no-op when current).")

  func run() throws {
    let config = loadConfiguration()
    let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: Logger(label: "sluice"))
    let applied = try reportingFailure("migrate") { try operations.migrate() }
    print(applied.isEmpty ? "schema is up to date" : "applied \(applied.joined(separator: ", "))")
  }
}

struct StatusCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "status",
    abstract: "Slot, confirmed LSN, lag, retained WAL, events per status, dead events, whether a daemon streams.")

  @Flag(help: "One JSON object.") var json = false

  func run() throws {
    let config = loadConfiguration()
    let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: Logger(label: "sluice"))
    let report = try reportingFailure("status") { try operations.status() }
    print(json ? report.json() : report.text())
  }
}

struct CheckCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "check",
    abstract: "Check configuration, connectivity, wal_level, privileges and the slot; say how to fix what is wrong.")

  func run() throws {
    let config = loadConfiguration()
    let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: Logger(label: "sluice"))
    print("ok    configuration (SLUICE_* variables)")
    let findings = operations.check()
    for finding in findings {
      print("\(finding.ok ? "ok  " : finding.warning ? "WARN" : "FAIL")  \(finding.what)")
      if !finding.ok, let fix = finding.fix { print("      fix: \(fix)") }
    }
    // SPEC 13: what `run` refuses (clients could act as anyone) is a configuration error.
    if findings.contains(where: { !$0.ok && $0.refusesRun }) { throw ExitCode(78) }
    if findings.contains(where: { !$0.ok && !$0.warning }) { throw ExitCode(1) }
  }
}

struct BackfillCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "backfill",
    abstract: "Process rows of a source that the ledger has not seen, in commit order, by the same rules.")

  @Argument(help: "The source table, schema.table.")
  var relation: String

  func run() throws {
    let config = loadConfiguration()
    let logger = Logger(label: "sluice")
    try Lifecycle.run("sluice-backfill", logger: logger) { [relation] stop in
      let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: logger)
      // On a terminal, a bar (redrawn in place); elsewhere the log says how far it is every 5 s.
      let terminal = isatty(STDERR_FILENO) == 1
      let bar: ((String) -> Void)? =
        terminal ? { line in FileHandle.standardError.write(Data(("\r" + line).utf8)) } : nil
      let count = try reportingFailure("backfill") {
        try operations.backfill(relation: relation, stop: stop, bar: bar)
      }
      if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
      print("processed \(count) rows of \(relation)")
    }
  }
}

struct DeadLetterCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "dlq", abstract: "Dead events: list, retry, discard.",
    subcommands: [List.self, Retry.self, Discard.self])

  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List dead events.")
    @Flag(help: "One JSON object per line.") var json = false

    func run() throws {
      let config = loadConfiguration()
      let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: Logger(label: "sluice"))
      let dead = try reportingFailure("dlq list") { try operations.deadEvents() }
      if json {
        for event in dead {
          var writer = JSONWriter()
          writer.object([
            ("source", .text(event.source)), ("event_id", .text(event.eventID)),
            ("event_type", event.eventType.map(ColumnValue.text) ?? .null),
            ("actor", event.actor.map(ColumnValue.text) ?? .null), ("attempts", .int(Int64(event.attempts))),
            ("reason", event.reason.map(ColumnValue.text) ?? .null),
            ("processed_at", event.processedAt.map(ColumnValue.text) ?? .null),
          ])
          print(String(decoding: writer.bytes, as: UTF8.self))
        }
      } else if dead.isEmpty {
        print("no dead events")
      } else {
        for event in dead {
          print(
            "\(event.source)\t\(event.eventID)\t\(event.eventType ?? "")\t\(event.actor ?? "")\tattempts=\(event.attempts)\t\(event.reason ?? "")"
          )
        }
      }
    }
  }

  struct Retry: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Run a dead event's handler again (e.g. after deploying the missing handler).")
    @Argument(help: "The event id.") var id: String?
    @Flag(help: "Retry every dead event.") var all = false
    @Option(help: "The source, when the id is not unique.") var source: String?

    func validate() throws {
      if (id == nil) == !all { throw ValidationError("give an event id or --all") }
    }

    func run() throws {
      let config = loadConfiguration()
      let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: Logger(label: "sluice"))
      let results = try reportingFailure("dlq retry") { try operations.retryDead(id: id, source: source) }
      for (event, status, reason) in results {
        print("\(event.source)/\(event.eventID): \(status.rawValue)\(reason.map { " (\($0))" } ?? "")")
      }
      if results.isEmpty { print("no dead events") }
      if results.contains(where: { $0.1 == .dead }) { throw ExitCode(1) }
    }
  }

  struct Discard: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Give up on a dead event: it becomes `rejected`, its reason kept.")
    @Argument(help: "The event id.") var id: String
    @Option(help: "The source, when the id is not unique.") var source: String?

    func run() throws {
      let config = loadConfiguration()
      let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: Logger(label: "sluice"))
      let count = try reportingFailure("dlq discard") { try operations.discardDead(id: id, source: source) }
      guard count > 0 else {
        printError("sluice dlq discard: no dead event with id \(id)")
        throw ExitCode(1)
      }
      print("discarded \(count) event(s)")
    }
  }
}

struct OutboxCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "outbox", abstract: "Webhook deliveries: list pending and dead ones, retry, discard.",
    subcommands: [List.self, Retry.self, Discard.self])

  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "List dead and pending deliveries (the oldest 1,000 of each), never URLs or secrets.")
    @Flag(help: "One JSON object per line.") var json = false

    func run() throws {
      let config = loadConfiguration()
      let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: Logger(label: "sluice"))
      let deliveries = try reportingFailure("outbox list") { try operations.outboxDeliveries() }
      if json {
        for delivery in deliveries {
          var writer = JSONWriter()
          writer.object([
            ("id", .int(delivery.id)), ("endpoint", .text(delivery.endpoint)), ("status", .text(delivery.status)),
            ("webhook_id", .text(delivery.idempotencyKey)), ("event_type", .text(delivery.eventType)),
            ("attempts", .int(Int64(delivery.attempts))),
            ("next_attempt_at", delivery.nextAttemptAt.map(ColumnValue.text) ?? .null),
            ("last_status", delivery.lastStatus.map { .int(Int64($0)) } ?? .null),
            ("last_error", delivery.lastError.map(ColumnValue.text) ?? .null),
            ("created_at", delivery.createdAt.map(ColumnValue.text) ?? .null),
          ])
          print(String(decoding: writer.bytes, as: UTF8.self))
        }
      } else if deliveries.isEmpty {
        print("no pending or dead deliveries")
      } else {
        for delivery in deliveries {
          print(
            "\(delivery.id)\t\(delivery.status)\t\(delivery.endpoint)\t\(delivery.idempotencyKey)\tattempts=\(delivery.attempts)\t\(delivery.lastError ?? "")"
          )
        }
      }
    }
  }

  struct Retry: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Send a dead delivery again, its attempts reset (or a pending one now).")
    @Argument(help: "The delivery's id (outbox list).") var id: Int64?
    @Flag(help: "Retry every dead delivery.") var all = false

    func validate() throws {
      if (id == nil) == !all { throw ValidationError("give a delivery id or --all") }
    }

    func run() throws {
      let config = loadConfiguration()
      let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: Logger(label: "sluice"))
      let count = try reportingFailure("outbox retry") { try operations.retryDeliveries(id: id) }
      if let id, count == 0 {
        printError("sluice outbox retry: no pending or dead delivery with id \(id)")
        throw ExitCode(1)
      }
      print("\(count) delivery(ies) pending again")
    }
  }

  struct Discard: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Give up on a pending or dead delivery: it is deleted.")
    @Argument(help: "The delivery's id (outbox list).") var id: Int64

    func run() throws {
      let config = loadConfiguration()
      let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: Logger(label: "sluice"))
      let count = try reportingFailure("outbox discard") { try operations.discardDelivery(id: id) }
      guard count > 0 else {
        printError("sluice outbox discard: no pending or dead delivery with id \(id)")
        throw ExitCode(1)
      }
      print("discarded delivery \(id)")
    }
  }
}

struct CompactCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "compact",
    abstract: "One retention pass now: delete the processed rows of sources with retain, and say how many.")

  @Flag(help: "Delete nothing; print how many rows would go.") var dryRun = false

  func run() throws {
    let config = loadConfiguration()
    let operations = Operations(configuration: config, registry: SluiceCLI.handlers, logger: Logger(label: "sluice"))
    let outcomes = try reportingFailure("compact") { try operations.compact(dryRun: dryRun) }
    if outcomes.allSatisfy({ $0.relation == "sluice.outcomes" || $0.relation == "sluice.outbox" }) {
      print("no source has retain set (or the slot does not exist yet)")
    }
    for outcome in outcomes {
      print("\(outcome.relation): \(dryRun ? "would delete" : "deleted") \(outcome.rows) rows")
      if let kept = outcome.kept { printError("sluice compact: \(outcome.relation): \(kept)") }
    }
  }
}

struct TailCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "tail",
    abstract: "Print every decoded change as one JSON line: pg_recvlogical, but readable.",
    discussion: """
      Uses a temporary slot unless --slot is given. A named slot is created if missing and its \
      position is acknowledged after each printed transaction, so a restarted tail continues \
      where it stopped. The publication (SLUICE_PUBLICATION) is created if missing: for --tables \
      if given, else FOR ALL TABLES.
      """)

  @Option(name: .long, help: "Stream from this named slot (created if missing) and acknowledge what was printed.")
  var slot: String?

  @Flag(name: .long, help: "Use a temporary slot (the default).")
  var temporary = false

  @Option(name: .long, help: "Comma-separated schema.table names to print (default: all in the publication).")
  var tables: String?

  @Option(name: .long, help: "Stop once streaming reaches this LSN (X/X), like pg_recvlogical --endpos.")
  var endpos: String?

  func validate() throws {
    if let endpos, LSN(endpos) == nil { throw ValidationError("--endpos must be an LSN such as 0/16B3748") }
    if slot != nil && temporary { throw ValidationError("--slot and --temporary exclude each other") }
    if let slot, !Configuration.isIdentifier(slot) {
      throw ValidationError("--slot must be 1-63 characters of a-z, 0-9 and _")
    }
  }

  func run() throws {
    let config = loadConfiguration()
    let output = FileOutput.standardOutput
    let tableList = tables.map {
      $0.split(separator: ",").map { $0.filter { $0 != " " } }.filter { !$0.isEmpty }
    }
    let options = TailOptions(
      conninfo: config.databaseURL, slot: slot, publication: config.publication, tables: tableList,
      endPosition: endpos.flatMap { LSN($0) })
    let logger = Logger(label: "sluice.tail")
    try Lifecycle.run("sluice-tail", logger: logger) { stop in
      let tail = Tail(options: options, logger: logger, stop: stop, write: output.write, flush: output.flush)
      try reportingFailure("tail") { try tail.run() }
    }
  }
}

/// A row of several MB is decoded, queued and bound once each: glibc would
/// keep such blocks in per-thread arenas (and raise its mmap threshold after
/// the first is freed), so RSS would stay at the high-water mark of every
/// thread. Large blocks are mapped and returned at once, and arenas are few.
func boundMallocArenas() {
  let mmapThreshold: Int32 = -3, arenaMax: Int32 = -8  // M_MMAP_THRESHOLD, M_ARENA_MAX (malloc.h)
  _ = mallopt(mmapThreshold, 256 * 1024)
  _ = mallopt(arenaMax, 2)
}

/// glibc's mallopt(3); Swift's Glibc module does not export malloc.h.
@_silgen_name("mallopt") private func mallopt(_ parameter: Int32, _ value: Int32) -> Int32
