import CLibPQ
import Glibc
import SluiceCore

/// A failure reported by libpq or the server, with the SQLSTATE when there is one.
public struct PostgresError: Error, CustomStringConvertible, Sendable {
  /// The SQLSTATE, when the server sent one (see `SQLState`).
  public var sqlState: SQLState?
  public var message: String
  /// What Sluice was doing: "connect", "START_REPLICATION", the first words of a query.
  public var context: String
  /// Server-side DETAIL, when given (e.g. the reason a handler raised).
  public var detail: String?

  public init(sqlState: SQLState? = nil, message: String, context: String, detail: String? = nil) {
    self.sqlState = sqlState
    self.message = message
    self.context = context
    self.detail = detail
  }

  public var description: String {
    "\(context): \(message)" + (sqlState.map { " (SQLSTATE \($0))" } ?? "")
  }

  /// True when retrying on a new connection may succeed: connection loss,
  /// server shutdown or crash, a terminated backend.
  public var isConnectionLoss: Bool {
    guard let state = sqlState else { return true }  // libpq-side errors: the connection broke
    return state.isConnectionLoss
  }
}

/// Rows of one result, every value in text format (nil for NULL).
public struct QueryResult: Sendable {
  public var columns: [String]
  /// Type OID of each column (PQftype), to decode values into typed ones.
  public var types: [UInt32] = []
  public var rows: [[String?]]
  /// Rows affected by INSERT/UPDATE/DELETE (PQcmdTuples), 0 otherwise.
  public var affectedRows: Int

  public init(columns: [String] = [], rows: [[String?]] = [], affectedRows: Int = 0) {
    self.columns = columns
    self.rows = rows
    self.affectedRows = affectedRows
  }

  /// The first row's value of `column`.
  public func value(_ column: String, row: Int = 0) -> String? {
    guard row < rows.count, let index = columns.firstIndex(of: column) else { return nil }
    return rows[row][index]
  }

  public var scalar: String? { rows.first?.first ?? nil }
}

/// One libpq connection. Every call blocks the calling thread: the daemon
/// gives each connection a thread of its own, never Swift's cooperative pool.
public final class PGConnection: @unchecked Sendable {
  /// The live connection; after `close`, one that never opened (libpq's
  /// CONNECTION_BAD), so that a late call fails instead of using freed memory.
  private(set) var handle: OpaquePointer
  private var closed = false
  /// Statements prepared on this connection by `send` (bounded; see `PreparedStatements`).
  var prepared = PreparedStatements()

  /// Session settings pinned on every connection, whatever the database's or
  /// role's defaults (SPEC section 8):
  /// - text values have one format (dates, intervals, floats, bytea);
  /// - what the guarantees rest on: commits wait for the WAL flush, read
  ///   committed, search_path `public` (pg_catalog is searched first, so no other schema can shadow a built-in), and no inherited
  ///   statement, lock, idle or idle-in-transaction timeout (the handler
  ///   timeout is the daemon's own, per attempt);
  /// - client_connection_check_interval (Postgres 14+) aborts a running
  ///   statement within a second of the daemon dying, so a hung handler
  ///   cannot keep the slot's lock;
  ///
  /// How the server notices a silent daemon (`ServerSide`) comes first,
  /// before the user's own options, which may override it.
  public static let pinnedOptions =
    "-c datestyle=ISO -c intervalstyle=postgres -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex"
    + " -c client_connection_check_interval=1000"
    + " -c synchronous_commit=on -c default_transaction_isolation=read\\ committed"
    + " -c default_transaction_read_only=off -c search_path=public"
    + " -c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0"
    + " -c idle_session_timeout=0"

  /// How the server's side of a session notices a daemon gone silent (SPEC
  /// 6: a standby takes over within 10 s). Without it, the backend of a
  /// daemon cut off by a silent network partition keeps its session, and
  /// the slot's advisory lock, for the OS default of about two hours. Set
  /// for the session in `options`, before the user's own, which can
  /// lengthen it (a lossy network); the server's own settings do not count.
  public enum ServerSide: Sendable {
    /// SQL sessions: TCP keepalives after 2 s idle, 3 probes 1 s apart, and
    /// `tcp_user_timeout` 5 s for data the daemon never acknowledges.
    case sql
    /// The daemon's stream: the same keepalives, and `wal_sender_timeout`
    /// 5 s (its reader answers the walsender at least every second, even
    /// while its queue is full). Not `tcp_user_timeout`: since Linux 5.11 it
    /// also ends a healthy connection whose receive window stays closed that
    /// long, which is what a busy daemon's stream does.
    case stream
    /// Other replication sessions (`tail`, `check`): the keepalives only.
    case replication

    static let keepalives = "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3"

    public var options: String {
      switch self {
      case .sql: Self.keepalives + " -c tcp_user_timeout=5000"
      case .stream: Self.keepalives + " -c wal_sender_timeout=5000"
      case .replication: Self.keepalives
      }
    }
  }

  /// The `options` for a connection: the server's side of noticing silence,
  /// then the user's own (from the URL or conninfo), then the pinned ones,
  /// which win where both set a value.
  public static func options(for conninfo: String, serverSide: ServerSide = .sql) -> String {
    let user = conninfoValue(conninfo, "options") ?? getenv("PGOPTIONS").map { String(cString: $0) } ?? ""
    guard !user.isEmpty else { return serverSide.options + " " + pinnedOptions }
    // Two spaces: if the user's options end in a backslash, it escapes the first only.
    return serverSide.options + " " + user + "  " + pinnedOptions
  }

  /// One keyword's value in a URI or `key=value` conninfo (PQconninfoParse), nil if unset or unparsable.
  public static func conninfoValue(_ conninfo: String, _ keyword: String) -> String? {
    var error: UnsafeMutablePointer<CChar>?
    guard let options = PQconninfoParse(conninfo, &error) else {
      if let error { PQfreemem(error) }
      return nil
    }
    defer { PQconninfoFree(options) }
    var option = options
    while let name = option.pointee.keyword {
      if String(cString: name) == keyword { return option.pointee.val.map { String(cString: $0) } }
      option += 1
    }
    return nil
  }

  /// `conninfo`: a URI or `key=value` string; libpq's PG* variables and
  /// passfile apply as usual. `replication`: open a logical replication
  /// connection (`replication=database`); `serverSide`: how the server
  /// notices silence (`.sql`, or `.replication` for a replication connection).
  public init(
    conninfo: String, replication: Bool = false, applicationName: String = "sluice", serverSide: ServerSide? = nil
  ) throws {
    // TCP keepalives first, so that the user's own URL settings override them: a
    // silent network cut is noticed on this side within about half a minute, not never.
    var keys = ["keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"]
    var values = ["1", "10", "5", "3", "30000"]
    // client_encoding after dbname, so that it wins over the URL's and PGCLIENTENCODING:
    // text must arrive as UTF-8, or distinct identities could decode alike.
    let serverSide = serverSide ?? (replication ? .replication : .sql)
    keys += ["dbname", "options", "fallback_application_name", "client_encoding"]
    values += [conninfo, Self.options(for: conninfo, serverSide: serverSide), applicationName, "UTF8"]
    if replication {
      keys.append("replication")
      values.append("database")
    }
    let connection = withCStringArray(keys) { keyPointers in
      withCStringArray(values) { valuePointers in
        PQconnectdbParams(keyPointers, valuePointers, 1)
      }
    }
    guard let connection else {
      throw PostgresError(message: "out of memory", context: "connect")
    }
    guard PQstatus(connection) == CONNECTION_OK else {
      let message = Self.trimmed(PQerrorMessage(connection))
      PQfinish(connection)
      throw PostgresError(sqlState: nil, message: message, context: "connect")
    }
    self.handle = connection
    // Server NOTICEs ("schema already exists, skipping") are not errors: keep them off stderr.
    PQsetNoticeProcessor(connection, { _, _ in }, nil)
  }

  deinit {
    close()
    PQfinish(handle)
  }

  /// Ends the session. The object stays usable: every later call fails
  /// ("the connection is closed"), as a lost connection's would.
  public func close() {
    guard !closed else { return }
    closed = true
    PQfinish(handle)
    handle = Self.neverOpened()
  }

  /// A connection object that never connects: a conninfo string libpq
  /// cannot parse stops it before any socket is made. (An unknown keyword
  /// in the keyword arrays does not: libpq goes on to the default server.)
  private static func neverOpened() -> OpaquePointer {
    guard let connection = PQconnectStart("closed") else { fatalError("libpq: out of memory") }
    return connection
  }

  /// `server_version_num`, e.g. 150018.
  public var serverVersion: Int { Int(PQserverVersion(handle)) }
  public var backendPID: Int32 { PQbackendPID(handle) }
  public var socket: Int32 { PQsocket(handle) }
  public var isHealthy: Bool { PQstatus(handle) == CONNECTION_OK }

  /// The last error libpq recorded on this connection.
  public func lastError(_ context: String) -> PostgresError {
    if closed { return PostgresError(message: "the connection is closed", context: context) }
    return PostgresError(message: Self.trimmed(PQerrorMessage(handle)), context: context)
  }

  /// Runs one statement with bound text parameters (extended protocol).
  @discardableResult
  public func query(_ sql: String, _ parameters: [String?] = []) throws -> QueryResult {
    let result = withOptionalCStringArray(parameters) { pointers in
      PQexecParams(handle, sql, Int32(parameters.count), nil, pointers, nil, nil, 0)
    }
    return try consume(result, context: Self.context(of: sql))
  }

  /// Runs one or more statements with the simple query protocol (the only
  /// one a replication connection speaks before PG 15); returns the last result.
  /// Whether a notification (`LISTEN`) has arrived since the last call; reads what the socket holds.
  public func takeNotifications() throws -> Bool {
    guard PQconsumeInput(handle) == 1 else { throw lastError("reading notifications") }
    var any = false
    while let notification = PQnotifies(handle) {
      PQfreemem(notification)
      any = true
    }
    return any
  }

  @discardableResult
  public func simpleQuery(_ sql: String) throws -> QueryResult {
    let context = Self.context(of: sql)
    guard PQsendQuery(handle, sql) == 1 else { throw lastError(context) }
    var last = QueryResult()
    var failure: PostgresError?
    while let result = PQgetResult(handle) {
      do {
        last = try consume(result, context: context)
      } catch let error as PostgresError {
        if failure == nil { failure = error }
      }
    }
    if let failure { throw failure }
    return last
  }

  func consume(_ result: OpaquePointer?, context: String) throws -> QueryResult {
    guard let result else { throw lastError(context) }
    defer { PQclear(result) }
    switch PQresultStatus(result) {
    case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY, PGRES_COPY_BOTH, PGRES_COPY_OUT, PGRES_COPY_IN:
      let affected = Int(String(cString: PQcmdTuples(result))) ?? 0
      return QueryResult(affectedRows: affected)
    case PGRES_TUPLES_OK, PGRES_SINGLE_TUPLE:
      let columnCount = PQnfields(result)
      let rowCount = PQntuples(result)
      let columns = (0..<columnCount).map { String(cString: PQfname(result, $0)) }
      let types = (0..<columnCount).map { UInt32(PQftype(result, $0)) }
      var rows: [[String?]] = []
      rows.reserveCapacity(Int(rowCount))
      for row in 0..<rowCount {
        rows.append(
          (0..<columnCount).map { column in
            PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
          })
      }
      var decoded = QueryResult(columns: columns, rows: rows)
      decoded.types = types
      return decoded
    default:
      throw Self.error(from: result, context: context, connection: handle)
    }
  }

  static func error(from result: OpaquePointer, context: String, connection: OpaquePointer) -> PostgresError {
    func field(_ code: UInt8) -> String? {
      guard let pointer = PQresultErrorField(result, Int32(code)) else { return nil }
      return String(cString: pointer)
    }
    let primary = field(UInt8(ascii: "M")) ?? trimmed(PQresultErrorMessage(result))
    let message = primary.isEmpty ? trimmed(PQerrorMessage(connection)) : primary
    return PostgresError(
      sqlState: field(UInt8(ascii: "C")).map(SQLState.init(rawValue:)), message: message, context: context,
      detail: field(UInt8(ascii: "D")))
  }

  static func trimmed(_ pointer: UnsafePointer<CChar>?) -> String {
    guard let pointer else { return "" }
    var text = String(cString: pointer)
    while text.last == "\n" || text.last == " " { text.removeLast() }
    return text
  }

  static func context(of sql: String) -> String {
    let words = sql.split(whereSeparator: { $0 == " " || $0 == "\n" }).prefix(3)
    return words.joined(separator: " ")
  }

  // MARK: - COPY (replication stream)

  /// Sends one CopyData message and flushes it.
  public func putCopyData(_ bytes: [UInt8]) throws {
    let sent = bytes.withUnsafeBufferPointer { buffer in
      buffer.withMemoryRebound(to: CChar.self) { PQputCopyData(handle, $0.baseAddress, Int32($0.count)) }
    }
    guard sent == 1, PQflush(handle) == 0 else { throw lastError("send CopyData") }
  }

  /// Ends our side of a COPY BOTH (CopyDone).
  public func putCopyEnd() throws {
    guard PQputCopyEnd(handle, nil) == 1, PQflush(handle) == 0 else { throw lastError("CopyDone") }
  }

  /// Quotes an identifier for SQL text (`sluice.sources` names, slot names).
  public static func quoteIdentifier(_ name: String) -> String {
    "\"" + name.replacingAll("\"", with: "\"\"") + "\""
  }

  /// Quotes a qualified name (`schema.table`, `schema.function`): each part
  /// as an identifier, split at the first dot. The one place names from the
  /// configuration tables become SQL text.
  public static func quoteQualified(_ name: String) -> String {
    name.split(separator: ".", maxSplits: 1).map { quoteIdentifier(String($0)) }.joined(separator: ".")
  }

  /// Quotes a literal for SQL text where parameters cannot be bound (replication commands).
  public static func quoteLiteral(_ text: String) -> String {
    "'" + text.replacingAll("'", with: "''") + "'"
  }
}

extension String {
  func replacingAll(_ target: Character, with replacement: String) -> String {
    var out = ""
    out.reserveCapacity(utf8.count)
    for char in self {
      if char == target { out += replacement } else { out.append(char) }
    }
    return out
  }
}

func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
  let duplicates = strings.map { strdup($0) }
  defer { duplicates.forEach { free($0) } }
  var pointers: [UnsafePointer<CChar>?] = duplicates.map { UnsafePointer($0) }
  pointers.append(nil)
  return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}

func withOptionalCStringArray<R>(_ strings: [String?], _ body: (UnsafePointer<UnsafePointer<CChar>?>?) -> R) -> R {
  let duplicates = strings.map { $0.map { strdup($0) } ?? nil }
  defer { duplicates.forEach { free($0) } }
  let pointers: [UnsafePointer<CChar>?] = duplicates.map { $0.map { UnsafePointer($0) } }
  return pointers.withUnsafeBufferPointer { body($0.baseAddress) }
}

/// Postgres array literals, to bind a whole column of values as one parameter
/// (`unnest($1::text[])`): one round trip for a batch instead of one per row.
public enum PGArray {
  public static func literal(_ values: some Sequence<String?>) -> String {
    var builder = PGArrayBuilder()
    for value in values { builder.append(value) }
    return builder.literal
  }
}

/// A text-array literal built one element at a time, byte-wise: the ledger
/// builds a dozen of these for every batch, in one pass over its rows.
public struct PGArrayBuilder {
  private var out: [UInt8] = [UInt8(ascii: "{")]
  private var first = true

  public init(capacity: Int = 256) { out.reserveCapacity(capacity) }

  public mutating func append(_ value: String?) {
    if !first { out.append(UInt8(ascii: ",")) }
    first = false
    guard var value else {
      out.append(contentsOf: "NULL".utf8)
      return
    }
    out.append(UInt8(ascii: "\""))
    value.withUTF8 { bytes in
      for byte in bytes {
        if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") { out.append(UInt8(ascii: "\\")) }
        out.append(byte)
      }
    }
    out.append(UInt8(ascii: "\""))
  }

  public var literal: String {
    var bytes = out
    bytes.append(UInt8(ascii: "}"))
    return String(decoding: bytes, as: UTF8.self)
  }
}

/// One result read back in pipeline mode.
public enum PipelineResult: Sendable {
  case ok(QueryResult)
  case failed(PostgresError)
  /// Skipped because an earlier statement in the pipeline failed.
  case aborted
  /// The answer to a `sendSync()`.
  case sync
}

extension PGConnection {
  /// libpq pipeline mode: statements are sent without waiting for their
  /// results, which are read back in order (one round trip for a batch).
  public func enterPipelineMode() throws {
    guard PQenterPipelineMode(handle) == 1 else { throw lastError("enter pipeline mode") }
  }

  /// Leaves pipeline mode; every result must have been read.
  public func exitPipelineMode() throws {
    guard PQexitPipelineMode(handle) == 1 else { throw lastError("exit pipeline mode") }
  }

  /// Queues one statement with bound text parameters, as a named prepared
  /// statement (prepared on first use, so later sends skip parse and plan).
  /// Returns true when it also queued the PREPARE, whose result comes first.
  @discardableResult
  public func send(_ sql: String, _ parameters: [String?] = []) throws -> Bool {
    var preparing = false
    let name: String
    if let known = prepared.name(for: sql) {
      name = known
    } else {
      name = prepared.add(sql)
      guard PQsendPrepare(handle, name, sql, Int32(parameters.count), nil) == 1 else {
        prepared.never(sql)
        throw lastError(Self.context(of: sql))
      }
      preparing = true
    }
    let sent = withOptionalCStringArray(parameters) { pointers in
      PQsendQueryPrepared(handle, name, Int32(parameters.count), pointers, nil, nil, 0)
    }
    guard sent == 1 else { throw lastError(Self.context(of: sql)) }
    return preparing
  }

  /// A PREPARE that failed or was skipped (its pipeline aborted): the
  /// statement does not exist on the server; the next send prepares it anew.
  public func preparationFailed(_ sql: String) { prepared.never(sql) }

  /// An execution failed in a way that may have broken the statement itself
  /// (its plan no longer fits the table): deallocate it before the next batch.
  public func executionFailed(_ sql: String, _ error: PostgresError) {
    if error.sqlState == .featureNotSupported { prepared.drop(sql) }
  }

  /// Deallocates statements evicted from the cache or broken. Call outside pipeline mode.
  /// Statements evicted from the cache wait to be deallocated (outside a pipeline).
  public var hasEvicted: Bool { prepared.hasEvicted }

  public func deallocateEvicted() throws {
    for name in prepared.takeEvicted() {
      do {
        try simpleQuery("DEALLOCATE \(Self.quoteIdentifier(name))")
      } catch let error as PostgresError where !error.isConnectionLoss {
        // Already gone (its PREPARE was skipped after it was evicted).
      }
    }
  }

  /// Statements this connection holds on the server (for tests and status).
  public var preparedStatementCount: Int { prepared.count }

  /// Marks a sync point and flushes what is queued.
  public func sendSync() throws {
    guard PQpipelineSync(handle) == 1 else { throw lastError("pipeline sync") }
  }

  /// The next result in pipeline order.
  public func nextPipelineResult() throws -> PipelineResult {
    guard let result = PQgetResult(handle) else { throw lastError("pipeline: no result where one was due") }
    let status = PQresultStatus(result)
    if status == PGRES_PIPELINE_SYNC {
      PQclear(result)
      return .sync
    }
    defer {
      // Each statement's results end with a NULL.
      while let extra = PQgetResult(handle) { PQclear(extra) }
    }
    if status == PGRES_PIPELINE_ABORTED {
      PQclear(result)
      return .aborted
    }
    do {
      return .ok(try consume(result, context: "pipeline"))
    } catch let error as PostgresError {
      return .failed(error)
    }
  }
}

/// The named statements a connection prepared, by SQL text. Bounded: past
/// `capacity` the least recently used is evicted and deallocated, so a
/// handler that builds SQL text per event cannot grow the backend's memory.
/// A failed execution keeps its statement (it still exists on the server);
/// only a PREPARE that never happened is forgotten.
struct PreparedStatements {
  static let capacity = 64
  private var names: [String: (name: String, used: Int)] = [:]
  private var evicted: [String] = []
  private var clock = 0
  private var counter = 0

  var count: Int { names.count }

  mutating func name(for sql: String) -> String? {
    guard let entry = names[sql] else { return nil }
    clock += 1
    names[sql] = (entry.name, clock)
    return entry.name
  }

  /// Registers a new statement and returns its name, evicting the least recently used.
  mutating func add(_ sql: String) -> String {
    if names.count >= Self.capacity, let oldest = names.min(by: { $0.value.used < $1.value.used }) {
      names[oldest.key] = nil
      evicted.append(oldest.value.name)
    }
    counter += 1
    clock += 1
    let name = "sluice_\(counter)"
    names[sql] = (name, clock)
    return name
  }

  /// Its PREPARE never took effect: forget it, nothing to deallocate.
  mutating func never(_ sql: String) { names[sql] = nil }

  /// It exists on the server but must not be used again.
  mutating func drop(_ sql: String) {
    if let entry = names.removeValue(forKey: sql) { evicted.append(entry.name) }
  }

  var hasEvicted: Bool { !evicted.isEmpty }

  mutating func takeEvicted() -> [String] {
    defer { evicted.removeAll() }
    return evicted
  }
}
