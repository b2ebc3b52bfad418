import Foundation
import Sluice
import SluicePostgres
import Testing

/// A small XP game with a SQL handler, for pipeline tests that run the plain `sluice` binary.
enum XPFixture {
  static func install(_ db: TestDatabase) throws {
    try Migrator.migrate(db.connection, publication: "sluice")
    try db.sql(
      """
      CREATE SCHEMA xp;
      CREATE TABLE xp.actions (id text PRIMARY KEY, user_id text, type text, dedupe_key text,
                               payload jsonb NOT NULL DEFAULT '{}');
      CREATE TABLE xp.totals (user_id text PRIMARY KEY, xp bigint NOT NULL);
      CREATE TABLE xp.noise (id serial PRIMARY KEY, note text);
      CREATE TABLE xp.switches (name text PRIMARY KEY, failing boolean NOT NULL);
      CREATE FUNCTION xp.award(e jsonb) RETURNS void LANGUAGE plpgsql AS $$
      DECLARE n bigint;
      BEGIN
        n := (e->'row'->'payload'->>'xp')::bigint;
        IF n IS NULL OR n < 1 THEN PERFORM sluice.reject('xp must be a positive integer'); END IF;
        INSERT INTO xp.totals VALUES (e->>'actor', n)
          ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + n;
      END $$;
      -- Fails while its switch is on, with an error that may pass (a
      -- serialization failure: retried, SPEC 8), until it is fixed.
      CREATE FUNCTION xp.flaky(e jsonb) RETURNS void LANGUAGE plpgsql AS $$
      BEGIN
        IF (SELECT failing FROM xp.switches WHERE name = 'flaky') THEN
          RAISE EXCEPTION 'flaky handler is broken' USING ERRCODE = 'serialization_failure';
        END IF;
        INSERT INTO xp.totals VALUES (e->>'actor', 1000)
          ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + 1000;
      END $$;
      INSERT INTO xp.switches VALUES ('flaky', true);
      SELECT sluice.add_source('xp.actions', actor_column => 'user_id', event_type_column => 'type',
                               dedupe_column => 'dedupe_key');
      INSERT INTO sluice.handlers VALUES ('award', 'xp.award'), ('flaky', 'xp.flaky');
      INSERT INTO sluice.permission_rules (event_type, role)
        VALUES ('award', 'player'), ('flaky', 'anyone'), ('later', 'anyone');
      """)
  }

  /// A SQL handler `xp.<type>(e jsonb)` with this body, registered for `type`, which anyone may emit.
  static func handler(_ db: TestDatabase, _ type: String, language: String = "plpgsql", _ body: String) throws {
    try db.sql(
      """
      CREATE FUNCTION xp.\(type)(e jsonb) RETURNS void LANGUAGE \(language) AS $$ \(body) $$;
      INSERT INTO sluice.handlers VALUES ('\(type)', 'xp.\(type)');
      INSERT INTO sluice.permission_rules (event_type, role) VALUES ('\(type)', 'anyone');
      """)
  }

  static func grant(_ db: TestDatabase, _ actors: [String], role: String = "player") throws {
    for actor in actors { try db.sql("INSERT INTO sluice.actor_roles (actor, role) VALUES ($1, $2)", [actor, role]) }
  }

  /// One source transaction of (id, user, type, xp, dedupe key) rows.
  static func insert(_ db: TestDatabase, _ rows: [(String, String, String, Int, String?)]) throws {
    let values = rows.map { id, user, type, xp, key in
      "('\(id)', '\(user)', '\(type)', '{\"xp\": \(xp)}', \(key.map { "'\($0)'" } ?? "NULL"))"
    }.joined(separator: ", ")
    try db.sql("INSERT INTO xp.actions (id, user_id, type, payload, dedupe_key) VALUES \(values)")
  }

  static func totals(_ db: TestDatabase) throws -> [String: Int] {
    var totals: [String: Int] = [:]
    for row in try db.sql("SELECT user_id, xp FROM xp.totals").rows {
      totals[row[0] ?? ""] = Int(row[1] ?? "") ?? -1
    }
    return totals
  }

  static func statuses(_ db: TestDatabase) throws -> [String: String] {
    var result: [String: String] = [:]
    for row in try db.sql("SELECT event_id, status FROM sluice.event_log").rows { result[row[0] ?? ""] = row[1] ?? "" }
    return result
  }

  static func ledgerCount(_ db: TestDatabase) throws -> Int {
    Int(try db.scalar("SELECT count(*) FROM sluice.event_log") ?? "") ?? -1
  }
}

/// Starts `sluice run` (or another command) against a test database.
func sluice(_ db: TestDatabase, _ arguments: [String], _ environment: [String: String] = [:], binary: String = "sluice")
  throws -> ChildProcess
{
  try ChildProcess(
    binary, arguments,
    environment: [
      "SLUICE_DATABASE_URL": db.url, "SLUICE_SLOT": db.slot, "SLUICE_METRICS_ADDR": "off", "SLUICE_LOG_LEVEL": "info",
    ]
    .merging(environment) { $1 })
}

func startDaemon(
  _ db: TestDatabase, _ environment: [String: String] = [:], binary: String = "sluice",
  sourceLocation: SourceLocation = #_sourceLocation
) throws -> ChildProcess {
  let daemon = try sluice(db, ["run"], environment, binary: binary)
  #expect(
    try eventually(30, "the daemon to stream: \(daemon.standardError)", sourceLocation: sourceLocation) {
      daemon.standardError.contains("info streaming")
    }, sourceLocation: sourceLocation)
  return daemon
}

/// Runs a one-shot command to completion; returns (status, stdout, stderr).
func runCommand(
  _ db: TestDatabase, _ arguments: [String], _ environment: [String: String] = [:], binary: String = "sluice"
)
  throws -> (Int32?, String, String)
{
  let process = try sluice(db, arguments, environment, binary: binary)
  let status = process.waitForExit(seconds: 60)
  return (status, process.standardOutput, process.standardError)
}

typealias SeededGenerator = SplitMix64

func testSeed(default value: UInt64) -> UInt64 {
  let seed = ProcessInfo.processInfo.environment["SLUICE_TEST_SEED"].flatMap { UInt64($0) } ?? value
  print("seed: \(seed) (set SLUICE_TEST_SEED to replay)")
  return seed
}

/// Runs the daemon once so that the slot exists, then stops it: rows written
/// after this reach the daemon through the stream, not the slot-creation backfill.
func createSlot(_ db: TestDatabase, _ environment: [String: String] = [:], binary: String = "sluice") throws {
  let daemon = try startDaemon(db, environment, binary: binary)
  daemon.signal(SIGTERM)
  #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
}
