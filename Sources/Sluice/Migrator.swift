public import SluicePostgres
import SluiceSchema

/// Installs and checks Sluice's schema (`sql/NNN_*.sql`).
public enum Migrator {
  /// The configuration tables, published so that the daemon sees their changes in stream order.
  static let publishedTables = [
    "sluice.sources", "sluice.permission_rules", "sluice.actor_roles", "sluice.handlers", "sluice.actor_keys",
  ]

  /// Applies every migration not yet applied, each in its own transaction,
  /// and creates the publication. Returns the names applied (empty: nothing to do).
  @discardableResult
  public static func migrate(_ connection: PGConnection, publication: String, outcomesPublication: String? = nil)
    throws -> [String]
  {
    // One migrator at a time, whoever else runs `sluice migrate`.
    try connection.query("SELECT pg_advisory_lock(hashtext('sluice.migrate'))")
    defer { _ = try? connection.query("SELECT pg_advisory_unlock(hashtext('sluice.migrate'))") }
    try connection.simpleQuery(
      """
      CREATE SCHEMA IF NOT EXISTS sluice;
      CREATE TABLE IF NOT EXISTS sluice.schema_migrations (
        version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
      """)
    let applied = Set(try connection.query("SELECT version FROM sluice.schema_migrations").rows.compactMap { $0[0] })
    var done: [String] = []
    for migration in SchemaMigrations.all where !applied.contains(String(migration.version)) {
      try connection.simpleQuery("BEGIN")
      do {
        try connection.simpleQuery(migration.sql)
        try connection.query(
          "INSERT INTO sluice.schema_migrations (version, name) VALUES ($1, $2)",
          [String(migration.version), migration.name])
        try connection.simpleQuery("COMMIT")
      } catch {
        _ = try? connection.simpleQuery("ROLLBACK")
        throw error
      }
      done.append(migration.name)
    }
    try ensurePublication(connection, publication)
    if let outcomesPublication { try ensureOutcomesPublication(connection, outcomesPublication) }
    return done
  }

  /// Puts `sluice.outcomes` in the publication a sync layer streams
  /// (`SLUICE_OUTCOMES_PUBLICATION`, SPEC 12): creates the publication if it
  /// is missing, adds the table if it lacks it (one `FOR ALL TABLES` has it).
  public static func ensureOutcomesPublication(_ connection: PGConnection, _ publication: String) throws {
    let name = PGConnection.quoteIdentifier(publication)
    let row = try connection.query(
      """
      SELECT EXISTS (SELECT 1 FROM pg_publication_tables t
                     WHERE t.pubname = p.pubname AND t.schemaname = 'sluice' AND t.tablename = 'outcomes')
      FROM pg_publication p WHERE p.pubname = $1
      """, [publication]
    ).rows.first
    do {
      if row == nil {
        try connection.query("CREATE PUBLICATION \(name) FOR TABLE sluice.outcomes")
      } else if row?[0] != "t" {
        try connection.query("ALTER PUBLICATION \(name) ADD TABLE sluice.outcomes")
      }
    } catch let error as PostgresError where error.sqlState == .insufficientPrivilege {
      throw PostgresError(
        sqlState: error.sqlState,
        message:
          "sluice.outcomes must be in publication \(publication) (SLUICE_OUTCOMES_PUBLICATION): run `sluice migrate` as the owner of both",
        context: "publication")
    }
  }

  /// What the publication must do: publish every kind of change (the
  /// configuration tables' deletes and truncates are revokes), and name a
  /// partitioned source by its root, so that every partition's rows, present
  /// and future, are events of the registered table.
  static let publicationOptions = "publish = 'insert, update, delete, truncate', publish_via_partition_root = true"

  /// Creates the publication with the configuration tables if it is
  /// missing, adds any configuration table it lacks, and sets its options
  /// (`publicationOptions`) if they differ.
  public static func ensurePublication(_ connection: PGConnection, _ publication: String) throws {
    let row = try connection.query(
      "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate AND pubviaroot FROM pg_publication WHERE pubname = $1",
      [publication]
    ).rows.first
    let name = PGConnection.quoteIdentifier(publication)
    guard let row else {
      try connection.query(
        "CREATE PUBLICATION \(name) FOR TABLE \(publishedTables.joined(separator: ", ")) WITH (\(publicationOptions))")
      return
    }
    do {
      if row[0] != "t" { try connection.query("ALTER PUBLICATION \(name) SET (\(publicationOptions))") }
      let members = Set(
        try connection.query(
          "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1", [publication]
        ).rows.compactMap { $0[0] })
      for table in publishedTables where !members.contains(table) {
        try connection.query("ALTER PUBLICATION \(name) ADD TABLE \(table)")
      }
    } catch let error as PostgresError where error.sqlState == .insufficientPrivilege {
      throw PostgresError(
        sqlState: error.sqlState,
        message:
          "publication \(publication) must publish inserts, updates, deletes and truncates via the partition root, with the configuration tables: run `sluice migrate` as its owner",
        context: "publication")
    }
  }

  /// Versions the binary knows but the database lacks.
  public static func pending(_ connection: PGConnection) throws -> [String] {
    let exists = try connection.query("SELECT to_regclass('sluice.schema_migrations') IS NOT NULL").scalar == "t"
    guard exists else { return SchemaMigrations.all.map(\.name) }
    let applied = Set(try connection.query("SELECT version FROM sluice.schema_migrations").rows.compactMap { $0[0] })
    return SchemaMigrations.all.filter { !applied.contains(String($0.version)) }.map(\.name)
  }
}
