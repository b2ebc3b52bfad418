import ArgumentParser
import Glibc
import Logging
import Sluice
import SluiceCore

@main
struct SluiceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "sluice",
    abstract: "Turns rows untrusted clients write into Postgres into trusted, exactly-once server-side effects.",
    discussion: "Configured by SLUICE_* environment variables (see systemd/sluice.env.example).",
    version: SluiceVersion.current,
    subcommands: [TailCommand.self]
  )
}

/// Reads the configuration or exits 78 (EX_CONFIG) with one line naming the variable.
func loadConfiguration() -> Configuration {
  do {
    return try Configuration(environment: ProcessEnvironment.current)
  } catch {
    printError("sluice: \(error)")
    exit(78)
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

  func validate() throws {
    if slot != nil && temporary { throw ValidationError("--slot and --temporary exclude each other") }
    if let slot, !Configuration.isIdentifier(slot) {
      throw ValidationError("--slot must be 1-63 characters of a-z, 0-9 and _")
    }
  }

  func run() throws {
    let config = loadConfiguration()
    SluiceLogHandler.bootstrap(level: config.logLevel, format: config.logFormat)
    StopSignal.installProcessHandlers()
    let output = FileOutput.standardOutput
    let tableList = tables.map {
      $0.split(separator: ",").map { String($0).trimmingCharacters(in: " ") }.filter { !$0.isEmpty }
    }
    let tail = Tail(
      options: TailOptions(
        conninfo: config.databaseURL, slot: slot, publication: config.publication, tables: tableList),
      logger: Logger(label: "sluice.tail"), stop: .process,
      write: output.write, flush: output.flush)
    do {
      try tail.run()
    } catch {
      printError("sluice tail: \(error)")
      throw ExitCode(1)
    }
  }
}

extension String {
  func trimmingCharacters(in set: String) -> String {
    String(drop(while: { set.contains($0) }).reversed().drop(while: { set.contains($0) }).reversed())
  }
}
