import Foundation
import Sluice
import SluiceHTTP
import SluicePostgres
import Testing

/// SPEC 13, whose event it is: tried as a client holding only INSERT on a
/// source (and nothing in schema sluice) would, through the role switch
/// PostgREST makes (`SET ROLE` from a login role that is a superuser here:
/// the guard must judge the effective role).
@Suite(.serialized) struct IdentityTests {
  /// A client role of this test's own (roles are cluster-wide), with INSERT on the given tables only.
  static func clientRole(_ db: TestDatabase, _ name: String, insertOn tables: [String]) throws -> String {
    let role = "\(db.slot)_\(name)"
    try db.sql("DROP ROLE IF EXISTS \(role); CREATE ROLE \(role) NOLOGIN")
    for table in tables {
      let schema = table.split(separator: ".")[0]
      try db.sql("GRANT USAGE ON SCHEMA \(schema) TO \(role); GRANT INSERT ON \(table) TO \(role)")
    }
    return role
  }

  /// Runs `sql` as `role` with these identity settings, in a transaction of its own.
  @discardableResult
  static func asClient(
    _ db: TestDatabase, _ role: String, actor: String? = nil, claims: String? = nil, _ sql: String,
    _ parameters: [String?] = []
  ) throws -> QueryResult {
    try db.sql("BEGIN")
    do {
      try db.sql("SELECT set_config('role', $1, true)", [role])
      if let actor { try db.sql("SELECT set_config('sluice.actor', $1, true)", [actor]) }
      if let claims { try db.sql("SELECT set_config('request.jwt.claims', $1, true)", [claims]) }
      let result = try db.sql(sql, parameters)
      try db.sql("COMMIT")
      return result
    } catch {
      try? db.sql("ROLLBACK")
      throw error
    }
  }

  /// The SQLSTATE and message `body` fails with (nil: it did not fail).
  static func refusal(_ body: () throws -> Void) -> (String, String)? {
    do {
      try body()
      return nil
    } catch let error as PostgresError {
      return ("\(error.sqlState.map { "\($0)" } ?? "?")", error.message)
    } catch {
      return ("?", "\(error)")
    }
  }

  static func award(_ id: Int, user: String?, key: String? = nil) -> (String, [String?]) {
    (
      "INSERT INTO game.actions (id, user_id, type, payload, dedupe_key) VALUES ($1, $2, 'award_xp', '{\"xp\": 10}', $3)",
      [String(format: "00000000-0000-4000-8000-%012d", id), user, key]
    )
  }

  @Test func theGuardStampsTheSessionsActorAndRefusesEveryOther() throws {
    let db = try TestDatabase("guard")
    try ExamplesTests.load(db)
    try db.sql("INSERT INTO sluice.actor_roles (actor, role) VALUES ('ann', 'player'), ('ben', 'player')")
    let web = try Self.clientRole(db, "web", insertOn: ["game.actions"])
    func insert(_ id: Int, user: String?, actor: String? = nil, claims: String? = nil, key: String? = nil) throws {
      let (sql, parameters) = Self.award(id, user: user, key: key)
      try Self.asClient(db, web, actor: actor, claims: claims, sql, parameters)
    }
    // Ann names Ben: refused before the WAL, both named.
    let forged = Self.refusal { try insert(1, user: "ben", actor: "ann") }
    #expect(forged?.0 == "42501")
    #expect(forged?.1 == "game.actions: the row names actor 'ben', but the session's actor is 'ann'")
    // Empty and NULL actors are filled in; her own name passes.
    try insert(2, user: "", actor: "ann")
    try insert(3, user: nil, actor: "ann")
    try insert(4, user: "ann", actor: "ann")
    // No identity: refused, naming the effective role (the login role is a superuser).
    let anonymous = Self.refusal { try insert(5, user: "ann") }
    #expect(anonymous?.0 == "42501")
    #expect(anonymous?.1.contains("no authenticated actor") == true)
    #expect(anonymous?.1.contains("for role \(web)") == true)
    // PostgREST and Supabase: the JWT's `sub`.
    try insert(6, user: nil, claims: #"{"sub": "ben", "role": "authenticated"}"#)
    let jwtForged = Self.refusal { try insert(7, user: "ann", claims: #"{"sub": "ben"}"#) }
    #expect(jwtForged?.0 == "42501")
    // Claims that are not JSON name nobody.
    #expect(
      Self.refusal { try insert(8, user: "ben", claims: "not json") }?.1.contains("no authenticated actor") == true)
    // Look-alike actors are compared byte for byte.
    let lookAlike = Self.refusal { try insert(9, user: "jose\u{0301}", actor: "jos\u{00E9}") }
    #expect(lookAlike?.0 == "42501")
    // Limits at the door: 54000, before the WAL.
    let longKey = Self.refusal { try insert(10, user: "ann", actor: "ann", key: String(repeating: "k", count: 1025)) }
    #expect(longKey?.0 == "54000")
    #expect(longKey?.1 == "game.actions: dedupe_key is 1025 bytes long; the limit is 1024")
    try db.sql("UPDATE sluice.settings SET value = '4096' WHERE name = 'max_row_bytes'")
    let big = Self.refusal {
      try Self.asClient(
        db, web, actor: "ann",
        "INSERT INTO game.actions (id, user_id, type, payload) VALUES (gen_random_uuid(), 'ann', 'award_xp', $1::jsonb)",
        ["{\"xp\": 1, \"junk\": \"\(String(repeating: "x", count: 5000))\"}"])
    }
    #expect(big?.0 == "54000")
    #expect(big?.1.contains("the limit is 4096 (sluice.settings max_row_bytes)") == true)
    // Updates are guarded too: a client cannot rewrite a row's actor for a later backfill to read.
    try db.sql("GRANT UPDATE ON game.actions TO \(web)")
    let rewritten = Self.refusal {
      try Self.asClient(db, web, actor: "ann", "UPDATE game.actions SET user_id = 'ben' WHERE user_id = 'ann'")
    }
    #expect(rewritten?.0 == "42501")
    // A trusted writer (a member of sluice_trusted_writer) with no identity keeps its column...
    let service = try Self.clientRole(db, "service", insertOn: ["game.actions"])
    try db.sql("GRANT sluice_trusted_writer TO \(service)")
    let (sql11, parameters11) = Self.award(11, user: "ben")
    try Self.asClient(db, service, sql11, parameters11)
    // ... and with one, is checked like anyone else.
    let (sql12, parameters12) = Self.award(12, user: "ben")
    #expect(Self.refusal { try Self.asClient(db, service, actor: "ann", sql12, parameters12) }?.0 == "42501")
    // A database may replace sluice.current_actor() to read another claim.
    try db.sql(
      """
      CREATE OR REPLACE FUNCTION sluice.current_actor() RETURNS text LANGUAGE sql STABLE
        RETURN nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'user_name';
      """)
    try insert(13, user: nil, claims: #"{"sub": "ann", "user_name": "ben"}"#)

    #expect(
      try db.sql("SELECT right(id::text, 2), user_id FROM game.actions ORDER BY id").rows == [
        ["02", "ann"], ["03", "ann"], ["04", "ann"], ["06", "ben"], ["11", "ben"], ["13", "ben"],
      ])
    // The daemon applies what was stamped: Ben's XP came from Ben's own sessions and a trusted service.
    let daemon = try startDaemon(db, binary: "sluice-examples")
    #expect(try eventually { try XPFixture.ledgerCount(db) == 6 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try db.sql("SELECT user_id, xp FROM game.user_xp ORDER BY 1").rows == [["ann", "30"], ["ben", "30"]])
  }

  @Test func partitionsPresentAndFutureAreGuardedAndRowsFromBeforeTheGuardAreDenied() throws {
    let db = try TestDatabase("guardparts")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann", "ben"])
    // Each statement in a transaction of its own (one simple query string would be one transaction).
    for statement in [
      """
      CREATE TABLE xp.parted (id text, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}', region text,
                              PRIMARY KEY (id, region)) PARTITION BY LIST (region)
      """,
      "CREATE TABLE xp.parted_eu PARTITION OF xp.parted FOR VALUES IN ('eu')",
      // Written before the table was a source: nobody proved this actor.
      "INSERT INTO xp.parted VALUES ('before', 'ben', 'award', '{\"xp\": 100}', 'eu')",
      "SELECT sluice.add_source('xp.parted', actor_column => 'user_id', event_type_column => 'type')",
      "CREATE TABLE xp.parted_us PARTITION OF xp.parted FOR VALUES IN ('us')",
      // A populated table attached later: its rows never met the guard either.
      "CREATE TABLE xp.loose (LIKE xp.parted)",
      "INSERT INTO xp.loose VALUES ('attached', 'ben', 'award', '{\"xp\": 1000}', 'asia')",
      "ALTER TABLE xp.parted ATTACH PARTITION xp.loose FOR VALUES IN ('asia')",
    ] {
      try db.sql(statement)
    }
    let web = try Self.clientRole(db, "web", insertOn: ["xp.parted"])
    for region in ["eu", "us", "asia"] {
      let forged = Self.refusal {
        try Self.asClient(
          db, web, actor: "ann", "INSERT INTO xp.parted VALUES ($1, 'ben', 'award', '{\"xp\": 1}', $2)",
          ["forged-" + region, region])
      }
      #expect(forged?.0 == "42501", "\(region)")
      try Self.asClient(
        db, web, actor: "ann",
        "INSERT INTO xp.parted (id, type, payload, region) VALUES ($1, 'award', '{\"xp\": 1}', $2)",
        ["own-" + region, region])
    }
    // The first run's backfill (the slot's snapshot) reads every row.
    let daemon = try startDaemon(db)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 5 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let denied = "event type 'award' denied: written before the source's guard (its actor was never proven)"
    let ledger = try db.sql("SELECT event_id, status, reason FROM sluice.event_log ORDER BY event_id").rows
    #expect(
      ledger == [
        ["attached", "denied", denied], ["before", "denied", denied], ["own-asia", "applied", nil],
        ["own-eu", "applied", nil], ["own-us", "applied", nil],
      ], "\(ledger)")
    #expect(try XPFixture.totals(db) == ["ann": 3])
  }

  @Test func existingRowsAreTrustedOnlyWhenRegisteredSoAndSluiceBackfillJudgesThemToo() throws {
    let db = try TestDatabase("guardexisting")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ben"])
    try db.sql(
      """
      CREATE TABLE xp.imported (id text PRIMARY KEY, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}');
      CREATE TABLE xp.legacy (LIKE xp.imported INCLUDING ALL);
      INSERT INTO xp.imported VALUES ('i1', 'ben', 'award', '{"xp": 5}');
      INSERT INTO xp.legacy VALUES ('l1', 'ben', 'award', '{"xp": 7}');
      """)
    try createSlot(db)
    try db.sql(
      """
      SELECT sluice.add_source('xp.imported', actor_column => 'user_id', event_type_column => 'type', existing => 'trust');
      SELECT sluice.add_source('xp.legacy', actor_column => 'user_id', event_type_column => 'type');
      """)
    for relation in ["xp.imported", "xp.legacy"] {
      let (status, output, errors) = try runCommand(db, ["backfill", relation])
      #expect(status == 0, "\(output) \(errors)")
    }
    #expect(try XPFixture.statuses(db) == ["i1": "applied", "l1": "denied"])
    #expect(try XPFixture.totals(db) == ["ben": 5])
    // Registering again with the guard in place keeps the fence: rows since then met the guard.
    try db.sql("INSERT INTO xp.legacy VALUES ('l2', 'ben', 'award', '{\"xp\": 9}')")
    try db.sql("SELECT sluice.add_source('xp.legacy', actor_column => 'user_id', event_type_column => 'type')")
    let (status, _, errors) = try runCommand(db, ["backfill", "xp.legacy"])
    #expect(status == 0, "\(errors)")
    #expect(try XPFixture.statuses(db)["l2"] == "applied")
  }

  @Test func aDisabledGuardOrAClientThatMayTurnItOffStopsCheckAndRun() throws {
    let db = try TestDatabase("guardoff")
    try XPFixture.install(db)
    let web = try Self.clientRole(db, "web", insertOn: ["xp.actions"])
    var (status, output, _) = try runCommand(db, ["check"])
    #expect(status == 0, "\(output)")
    #expect(output.contains("every source proves its actor"), "\(output)")
    for disable in ["DISABLE TRIGGER sluice_guard", "ENABLE TRIGGER sluice_guard"] {
      try db.sql("ALTER TABLE xp.actions \(disable)")
      (status, output, _) = try runCommand(db, ["check"])
      #expect(status == 78, "\(disable): \(output)")
      #expect(
        output.contains("FAIL  source xp.actions takes its actor from the session, but its guard is"), "\(output)")
      let (runStatus, _, errors) = try runCommand(db, ["run"])
      #expect(runStatus == 78, "\(disable): \(errors)")
      #expect(errors.contains("sluice run: source xp.actions takes its actor from the session"), "\(errors)")
    }
    try db.sql("ALTER TABLE xp.actions ENABLE ALWAYS TRIGGER sluice_guard")
    #expect(try runCommand(db, ["check"]).0 == 0)
    try db.sql("DROP TRIGGER sluice_guard ON xp.actions")
    (status, output, _) = try runCommand(db, ["check"])
    #expect(status == 78 && output.contains("guard is missing"), "\(output)")
    try db.sql("SELECT sluice.install_guard('xp.actions')")
    // A client that may add a trigger of its own (firing after the guard) or truncate.
    for privilege in ["TRIGGER", "TRUNCATE"] {
      try db.sql("GRANT \(privilege) ON xp.actions TO \(web)")
      (status, output, _) = try runCommand(db, ["check"])
      #expect(status == 78, "\(output)")
      #expect(output.contains("\(web) can \(privilege) on xp.actions (source xp.actions)"), "\(output)")
      #expect(try runCommand(db, ["run"]).0 == 78)
      try db.sql("REVOKE \(privilege) ON xp.actions FROM \(web)")
    }
    // While streaming: the daemon looks again and stops (exit 78, no restart loop).
    let daemon = try startDaemon(db)
    try db.sql("ALTER TABLE xp.actions DISABLE TRIGGER sluice_guard")
    #expect(daemon.waitForExit(seconds: 30) == 78, "\(daemon.standardError)")
    #expect(daemon.standardError.contains("its guard is not enabled always"), "\(daemon.standardError)")
  }

  @Test func aColumnSourceThatAClientCanWriteFailsCheck() throws {
    let db = try TestDatabase("columnsource")
    try XPFixture.install(db)
    try db.sql(
      """
      SELECT sluice.add_source('xp.actions', actor_column => 'user_id', event_type_column => 'type',
                               dedupe_column => 'dedupe_key', actor_from => 'column');
      """)
    #expect(try db.scalar("SELECT count(*) FROM pg_trigger WHERE tgname = 'sluice_guard'") == "0")
    var (status, output, _) = try runCommand(db, ["check"])
    #expect(status == 0, "\(output)")
    #expect(output.contains("WARN  source xp.actions takes its actor column as written"), "\(output)")
    // Directly, through a role it is a member of, and through PUBLIC.
    let direct = try Self.clientRole(db, "direct", insertOn: ["xp.actions"])
    let group = try Self.clientRole(db, "group", insertOn: ["xp.actions"])
    let member = "\(db.slot)_member"
    try db.sql("DROP ROLE IF EXISTS \(member); CREATE ROLE \(member) IN ROLE \(group)")
    (status, output, _) = try runCommand(db, ["check"])
    #expect(status == 1, "\(output)")
    for role in [direct, group, member] {
      #expect(
        output.contains(
          "FAIL  \(role) can INSERT into xp.actions, whose source xp.actions takes the actor column as written"),
        "\(role): \(output)")
    }
    try db.sql("REVOKE INSERT ON xp.actions FROM \(direct), \(group); GRANT INSERT ON xp.actions TO PUBLIC")
    (status, output, _) = try runCommand(db, ["check"])
    #expect(status == 1 && output.contains("FAIL  PUBLIC can INSERT into xp.actions"), "\(output)")
    // A trusted service is fine; `run` warns at start.
    try db.sql("REVOKE INSERT ON xp.actions FROM PUBLIC; GRANT INSERT ON xp.actions TO \(direct)")
    let daemon = try startDaemon(db)
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(daemon.standardError.contains("\(direct) can INSERT into xp.actions"), "\(daemon.standardError)")
    try db.sql("GRANT sluice_trusted_writer TO \(direct)")
    (status, output, _) = try runCommand(db, ["check"])
    #expect(status == 0, "\(output)")
  }

  @Test func theScopeIsProvenAndHandlersActAsTheirEventsActor() throws {
    let db = try TestDatabase("guardscope")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql(
      """
      CREATE TABLE xp.documents (id text PRIMARY KEY, team text NOT NULL);
      INSERT INTO xp.documents VALUES ('plan', 'team-a'), ('budget', 'team-b');
      CREATE TABLE xp.edits (id text PRIMARY KEY, user_id text, type text, doc text, team text,
                             payload jsonb NOT NULL DEFAULT '{}');
      CREATE FUNCTION xp.team_of(e xp.edits) RETURNS text LANGUAGE sql STABLE
        RETURN (SELECT team FROM xp.documents WHERE id = e.doc);
      SELECT sluice.add_source('xp.edits', actor_column => 'user_id', event_type_column => 'type',
                               scope_column => 'team', scope_from => 'xp.team_of');
      """)
    let web = try Self.clientRole(db, "web", insertOn: ["xp.edits"])
    let forged = Self.refusal {
      try Self.asClient(db, web, actor: "ann", "INSERT INTO xp.edits VALUES ('e1', 'ann', 'edit', 'budget', 'team-a')")
    }
    #expect(forged?.0 == "42501")
    #expect(forged?.1 == "xp.edits: the row names scope 'team-a', but it belongs to scope 'team-b'")
    try Self.asClient(db, web, actor: "ann", "INSERT INTO xp.edits (id, type, doc) VALUES ('e2', 'edit', 'plan')")
    #expect(try db.scalar("SELECT team FROM xp.edits WHERE id = 'e2'") == "team-a")
    // `check` warns on a source whose scope the client chooses while roles are granted per scope.
    try db.sql(
      """
      INSERT INTO sluice.actor_roles (actor, role, scope) VALUES ('ann', 'editor', 'team-a');
      SELECT sluice.add_source('xp.actions', actor_column => 'user_id', event_type_column => 'type',
                               dedupe_column => 'dedupe_key', scope_column => 'payload');
      """)
    let (_, output, _) = try runCommand(db, ["check"])
    #expect(output.contains("WARN  source xp.actions takes its scope as the client writes it"), "\(output)")
    #expect(!output.contains("source xp.edits takes its scope"), "\(output)")

    // A handler's follow-up event carries its event's actor, whatever the payload says.
    try db.sql("UPDATE sluice.sources SET scope_column = NULL WHERE relation = 'xp.actions'")
    try XPFixture.handler(
      db, "spawn",
      """
      BEGIN
        INSERT INTO xp.actions (id, user_id, type, payload)
          VALUES (e->>'id' || '-award', e->'row'->'payload'->>'as', 'award', '{"xp": 7}');
      END
      """)
    try createSlot(db)
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES
        ('s1', 'ann', 'spawn', '{}'), ('s2', 'ann', 'spawn', '{"as": "ben"}');
      """)
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "1"])
    // e2 came with the slot's backfill: no rule names 'edit'.
    #expect(try eventually { try XPFixture.ledgerCount(db) == 4 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let statuses = try XPFixture.statuses(db)
    #expect(
      statuses == ["e2": "denied", "s1": "applied", "s1-award": "applied", "s2": "dead"],
      "\(statuses) \(daemon.standardError)")
    #expect(try db.scalar("SELECT user_id FROM xp.actions WHERE id = 's1-award'") == "ann")
    #expect(
      try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 's2'")?.contains(
        "the row names actor 'ben', but the session's actor is 'ann'") == true)
    #expect(try XPFixture.totals(db) == ["ann": 7])
  }

  /// Found by review (attack on SPEC 13): what changes the actor after the
  /// guard judged the row. A generated actor column is computed after every
  /// BEFORE trigger, and another BEFORE trigger sorting after sluice_guard
  /// fires after it: each stored a row in Ben's name from Ann's session.
  @Test func whatCouldRewriteTheActorAfterTheGuardIsRefused() throws {
    let db = try TestDatabase("guardbypass")
    try XPFixture.install(db)
    try db.sql(
      """
      CREATE TABLE xp.computed (id text PRIMARY KEY, type text, payload jsonb NOT NULL DEFAULT '{}',
                                user_id text GENERATED ALWAYS AS (payload->>'user') STORED)
      """)
    let generated = Self.refusal {
      try db.sql("SELECT sluice.add_source('xp.computed', actor_column => 'user_id', event_type_column => 'type')")
    }
    #expect(
      generated?.1.contains("user_id of xp.computed is a generated column") == true, "\(generated.debugDescription)")
    // Made generated after registration: check and run refuse.
    try db.sql(
      """
      SELECT sluice.add_source('xp.computed', actor_column => 'type', event_type => 'award', id_column => 'id');
      ALTER TABLE xp.computed DROP COLUMN type;
      ALTER TABLE xp.computed ADD COLUMN type text GENERATED ALWAYS AS (payload->>'user') STORED;
      """)
    var (status, output, _) = try runCommand(db, ["check"])
    #expect(status == 78, "\(output)")
    #expect(output.contains("on xp.computed column type is generated"), "\(output)")
    try db.sql("SELECT sluice.drop_guard('xp.computed'); DELETE FROM sluice.sources WHERE relation = 'xp.computed'")
    #expect(try runCommand(db, ["check"]).0 == 0)

    let web = try Self.clientRole(db, "web", insertOn: ["xp.actions"])
    try db.sql(
      """
      CREATE FUNCTION xp.tidy() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN NEW.user_id := NEW.payload->>'as'; RETURN NEW; END $$;
      CREATE TRIGGER tidy BEFORE INSERT ON xp.actions FOR EACH ROW EXECUTE FUNCTION xp.tidy();
      """)
    try Self.asClient(
      db, web, actor: "ann",
      "INSERT INTO xp.actions (id, type, payload) VALUES ('t1', 'award', '{\"xp\": 1, \"as\": \"ben\"}')")
    #expect(try db.scalar("SELECT user_id FROM xp.actions WHERE id = 't1'") == "ben", "the bypass is real")
    (status, output, _) = try runCommand(db, ["check"])
    #expect(status == 78, "\(output)")
    #expect(output.contains("on xp.actions trigger tidy runs after it"), "\(output)")
    let (runStatus, _, errors) = try runCommand(db, ["run"])
    #expect(runStatus == 78, "\(errors)")
    // One that fires before the guard is judged by it.
    try db.sql("ALTER TRIGGER tidy ON xp.actions RENAME TO a_tidy")
    #expect(try runCommand(db, ["check"]).0 == 0)
    let renamed = Self.refusal {
      try Self.asClient(
        db, web, actor: "ann",
        "INSERT INTO xp.actions (id, type, payload) VALUES ('t2', 'award', '{\"xp\": 1, \"as\": \"ben\"}')")
    }
    #expect(renamed?.0 == "42501")
  }

  /// Found by review: the row limit counted compressed values as stored,
  /// so lz4 let 5 MB through a 100 kB limit; a `sub` claim that is not a
  /// string named an actor; a scope_from function outside the guard's
  /// search path was stored unqualified and broke every insert.
  @Test func compressedRowsNumericSubsAndUnqualifiedScopeFunctions() throws {
    let db = try TestDatabase("guardreview")
    try XPFixture.install(db)
    let web = try Self.clientRole(db, "web", insertOn: ["xp.actions"])
    try db.sql("UPDATE sluice.settings SET value = '100000' WHERE name = 'max_row_bytes'")
    try db.sql("GRANT TEMPORARY ON DATABASE \(db.slot) TO \(web)")
    let compressed = Self.refusal {
      try db.sql("BEGIN")
      defer { _ = try? db.sql("ROLLBACK") }
      try db.sql("SELECT set_config('role', $1, true), set_config('sluice.actor', 'ann', true)", [web])
      try db.sql(
        """
        SET LOCAL default_toast_compression = 'lz4';
        CREATE TEMP TABLE b (j jsonb) ON COMMIT DROP;
        INSERT INTO b SELECT jsonb_build_object('xp', 1, 'pad', repeat('a', 5000000));
        """)
      #expect(try db.scalar("SELECT pg_column_size(j) < 100000 FROM b") == "t", "compressed under the limit")
      try db.sql("INSERT INTO xp.actions (id, type, payload) SELECT 'z', 'award', j FROM b")
    }
    #expect(compressed?.0 == "54000", "\(compressed.debugDescription)")
    #expect(compressed?.1.contains("the limit is 100000") == true)

    for sub in ["42", "[\"ann\"]", "{\"a\": 1}", "true"] {
      let refused = Self.refusal {
        try Self.asClient(
          db, web, claims: "{\"sub\": \(sub)}", "INSERT INTO xp.actions (id, type) VALUES ('s', 'award')")
      }
      #expect(refused?.0 == "42501" && refused?.1.contains("no authenticated actor") == true, "sub \(sub)")
    }
    try Self.asClient(
      db, web, claims: #"{"sub": "ann"}"#, "INSERT INTO xp.actions (id, type) VALUES ('s', 'award')")
    #expect(try db.scalar("SELECT user_id FROM xp.actions WHERE id = 's'") == "ann")

    try db.sql(
      """
      CREATE TABLE public.edits (id text PRIMARY KEY, user_id text, team text);
      CREATE FUNCTION public.team_of(e public.edits) RETURNS text LANGUAGE sql STABLE RETURN 'team-a';
      SELECT sluice.add_source('edits', actor_column => 'user_id', event_type => 'edit',
                               scope_column => 'team', scope_from => 'team_of');
      """)
    #expect(try db.scalar("SELECT scope_from FROM sluice.sources WHERE relation = 'public.edits'") == "public.team_of")
    try db.sql("GRANT INSERT ON public.edits TO \(web)")
    try Self.asClient(db, web, actor: "ann", "INSERT INTO public.edits (id) VALUES ('e1')")
    #expect(try db.sql("SELECT user_id, team FROM public.edits").rows == [["ann", "team-a"]])
  }

  /// SPEC 13: a per-event Swift handler acts as its event's actor too: its
  /// follow-up event is stamped with that actor, and one that names another
  /// user in its payload is refused by the guard (the event goes dead).
  @Test func aSwiftHandlersFollowUpEventCarriesItsEventsActor() throws {
    let db = try TestDatabase("swiftspawn")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql("INSERT INTO sluice.permission_rules (event_type, role) VALUES ('swift_spawn', 'anyone')")
    try createSlot(db, binary: "sluice-fixtures")
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES
        ('w1', 'ann', 'swift_spawn', '{}'), ('w2', 'ann', 'swift_spawn', '{"as": "ben"}');
      """)
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "1"], binary: "sluice-fixtures")
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let statuses = try XPFixture.statuses(db)
    #expect(statuses == ["w1": "applied", "w1-award": "applied", "w2": "dead"], "\(statuses) \(daemon.standardError)")
    #expect(try db.scalar("SELECT user_id FROM xp.actions WHERE id = 'w1-award'") == "ann")
    #expect(
      try db.scalar("SELECT reason FROM sluice.event_log WHERE event_id = 'w2'")?.contains(
        "the row names actor 'ben', but the session's actor is 'ann'") == true)
    #expect(try XPFixture.totals(db) == ["ann": 7])
  }
}
