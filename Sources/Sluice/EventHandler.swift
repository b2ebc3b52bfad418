public import SluiceCore
public import SluicePostgres

/// What a handler decided about its event.
public enum Outcome: Sendable, Equatable {
  /// Its writes commit with the batch; the ledger says `applied`.
  case applied
  /// Its writes are rolled back; the ledger says `rejected` with this reason.
  case rejected(String)
}

/// Server-side code for one event type. Runs inside the batch transaction:
/// everything it writes through the context commits together with the
/// event's ledger row, or not at all. Throwing means "try again": the event
/// is retried with backoff, then `dead`.
///
/// ```swift
/// struct AwardBadge: EventHandler {
///   let eventType = "award_badge"
///   func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
///     guard let badge = event.payload?["badge"]?.string else { return .rejected("payload.badge missing") }
///     try context.execute("INSERT INTO game.badges (user_id, badge) VALUES ($1, $2)", [event.actor, badge])
///     return .applied
///   }
/// }
/// ```
public protocol EventHandler: Sendable {
  /// The event type this handler applies.
  var eventType: String { get }
  func handle(_ event: Event, in context: HandlerContext) throws -> Outcome
}

/// A handler that can also apply a run of consecutive events of its type in
/// one go: a set-based statement instead of one per event. Used on the fast
/// path; the careful path (after any failure) calls `handle` per event.
///
/// Contract: decide every event first, and write only for the applied ones.
/// Return one outcome per event, in order. A run in which it rejects an
/// event it emitted for is redone event by event, each in a savepoint, so
/// that the rejected event queues nothing; its later runs go event by event
/// on the fast path too.
public protocol BatchEventHandler: EventHandler {
  func handle(batch events: [Event], in context: HandlerContext) throws -> [Outcome]
}

/// Runs SQL inside the batch transaction, on behalf of one event.
///
/// Careful mode: the first statement sets a savepoint, so a rejected or
/// failed event undoes only its own writes. Fast mode (pipelined batches):
/// `execute` only queues its statement, `query` waits for its rows; if
/// anything fails, or the handler rejects after writing, the whole batch is
/// redone in careful mode (unless the handler has rejected after writing
/// before: then its events get a pipelined savepoint too). A handler sees
/// the same results either way.
public final class HandlerContext {
  let connection: PGConnection
  let pipeline: PipelineBatch?
  /// The event being handled; nil for a batch handler's context (it names the event to `emit`).
  let event: Event?
  /// In a pipeline: open a savepoint before the first statement.
  let pipelinedSavepoint: Bool
  private(set) var savepointOpen = false
  /// Statements this event has run or queued.
  private(set) var statements = 0
  /// The events `emit` queued deliveries for (`emitKey`).
  private(set) var emittedFor: Set<Bytewise> = []
  /// `sluice.actor` is set for this context's statements (SPEC 13: a handler
  /// acts as its event's actor; a batch handler, whose events have many, as none).
  var actorIsSet = false

  init(connection: PGConnection, pipeline: PipelineBatch? = nil, savepoint: Bool = false, event: Event? = nil) {
    self.connection = connection
    self.pipeline = pipeline
    self.pipelinedSavepoint = savepoint
    self.event = event
  }

  /// Queues a delivery of `body` (JSON text) to an endpoint of
  /// `sluice.endpoints`, in this event's transaction: it is sent once the
  /// batch commits, and never if the event is rejected or fails (SPEC
  /// section 9). An unknown endpoint fails the handler.
  public func emit(endpoint: String, body: String) throws {
    guard let event else { throw EmitOutsideEvent() }
    try emit(endpoint: endpoint, body: body, for: event)
  }

  /// `emit` for a batch handler, which names the event the delivery belongs to.
  public func emit(endpoint: String, body: String, for event: Event) throws {
    try execute(
      "SELECT sluice.queue_delivery($1, $2::jsonb, $3, \(Ledger.ledgerID("$4", "$7")), $5, $6)",
      [endpoint, body, event.source, event.id, event.type, event.actor, Ledger.flag(event)])
    emittedFor.insert(Self.emitKey(event))
  }

  /// Which event a delivery belongs to: its source and id, as the outbox names it.
  static func emitKey(_ event: Event) -> Bytewise {
    Bytewise("\(event.idIsSynthetic)\u{0}\(event.source)\u{0}\(event.id)")
  }

  /// Runs a statement with bound parameters and returns its rows.
  @discardableResult
  public func query(_ sql: String, _ parameters: [String?] = []) throws -> QueryResult {
    statements += 1
    try openSavepoint()
    try actAsActor()
    if let pipeline { return try pipeline.query(sql, parameters) }
    return try connection.query(sql, parameters)
  }

  /// Runs a statement for its effect. In a pipelined batch it is queued, and
  /// its errors surface when the batch is read back.
  public func execute(_ sql: String, _ parameters: [String?] = []) throws {
    statements += 1
    try openSavepoint()
    try actAsActor()
    if let pipeline { return try pipeline.send(sql, parameters) }
    try connection.query(sql, parameters)
  }

  private func run(_ sql: String) throws {
    if let pipeline { try pipeline.send(sql) } else { try connection.simpleQuery(sql) }
  }

  /// Before the first statement: `sluice.actor` is the event's actor, so
  /// that a follow-up event written into a `'session'` source carries it,
  /// whatever the payload names. Not counted in `statements`: it writes nothing.
  private func actAsActor() throws {
    guard !actorIsSet else { return }
    actorIsSet = true
    let sql = "SELECT set_config('sluice.actor', $1, true)"
    let actor = event?.actor ?? ""
    if let pipeline { try pipeline.send(sql, [actor]) } else { try connection.query(sql, [actor]) }
  }

  private func openSavepoint() throws {
    guard !savepointOpen, pipeline == nil || pipelinedSavepoint else { return }
    try run("SAVEPOINT sluice_event")
    savepointOpen = true
  }

  /// Keeps the event's writes.
  func commit() throws {
    guard savepointOpen else { return }
    try run("RELEASE SAVEPOINT sluice_event")
    savepointOpen = false
  }

  /// Undoes the event's writes.
  func rollback() throws {
    guard savepointOpen else { return }
    try run("ROLLBACK TO SAVEPOINT sluice_event")
    try run("RELEASE SAVEPOINT sluice_event")
    savepointOpen = false
  }
}

/// A handler backed by a row of `sluice.handlers`: calls the SQL function
/// with the event as jsonb. `sluice.reject(reason)` (SQLSTATE SL001) rejects.
public struct SQLFunctionHandler: EventHandler {
  public let eventType: String
  public let function: String

  public init(eventType: String, function: String) {
    self.eventType = eventType
    self.function = function
  }

  /// The event is named in the transaction-local setting `sluice.event`
  /// while the function runs (for `sluice.emit`), and its actor in
  /// `sluice.actor` (SPEC 13), and only then: the targets of one SELECT are
  /// evaluated in order.
  public func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
    context.actorIsSet = true
    try context.execute(
      """
      SELECT set_config('sluice.event', $2, true), set_config('sluice.actor', $3, true),
        \(Self.quotedFunctionName(function))($1::jsonb), set_config('sluice.event', '', true),
        set_config('sluice.actor', '', true)
      """, [event.json(), Self.emitContext(event), event.actor ?? ""])
    return .applied
  }

  /// What `sluice.emit` needs to know of the event.
  static func emitContext(_ event: Event) -> String {
    var writer = JSONWriter(capacity: 128)
    writer.object([
      ("source", .text(event.source)), ("id", .text(event.id)), ("synthetic", .bool(event.idIsSynthetic)),
      ("type", .text(event.type)), ("actor", event.actor.map(ColumnValue.text) ?? .null),
    ])
    return String(decoding: writer.bytes, as: UTF8.self)
  }

  /// `shop.apply_restock` → `"shop"."apply_restock"`: the name is quoted, never spliced raw.
  public static func quotedFunctionName(_ name: String) -> String { PGConnection.quoteQualified(name) }
}

/// `sluice.add_webhook`: sends the event, as SQL handlers receive it, to an
/// endpoint. Applied once queued.
struct WebhookHandler: EventHandler {
  let eventType: String
  let endpoint: String

  /// A delivery's body is at most 1 MiB (migration 006 holds `emit` to it too).
  static let maximumBodyBytes = 1 << 20

  func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
    let body = event.json()
    // The SQL function's check would make it an error, retried in vain: the event itself is too large.
    guard body.utf8.count <= Self.maximumBodyBytes else {
      return .rejected("the event is \(body.utf8.count) bytes as JSON, over the 1 MiB limit of a webhook body")
    }
    try context.emit(endpoint: endpoint, body: body, for: event)
    return .applied
  }
}

/// `context.emit(endpoint:body:)` in a batch handler, which has no one event.
public struct EmitOutsideEvent: Error, CustomStringConvertible {
  public var description: String {
    "context.emit(endpoint:body:) needs one event: a batch handler calls emit(endpoint:body:for:)"
  }
}

/// The Swift handlers compiled into a daemon, by event type (byte-wise).
/// SQL handlers from `sluice.handlers` are used for types that have no Swift handler.
public struct HandlerRegistry: Sendable {
  private var handlers: [Bytewise: any EventHandler] = [:]

  public init(_ handlers: [any EventHandler] = []) {
    for handler in handlers { register(handler) }
  }

  public mutating func register(_ handler: any EventHandler) {
    precondition(handlers[Bytewise(handler.eventType)] == nil, "two handlers for event type \(handler.eventType)")
    handlers[Bytewise(handler.eventType)] = handler
  }

  /// The Swift handler for a type.
  public func handler(for type: String) -> (any EventHandler)? { handlers[Bytewise(type)] }

  /// The handler for a type: the Swift one if registered, else the SQL function named.
  public func handler(for type: String, sqlFunction: String?) -> (any EventHandler)? {
    if let handler = handlers[Bytewise(type)] { return handler }
    return sqlFunction.map { SQLFunctionHandler(eventType: type, function: $0) }
  }

  /// What the planner needs to know of them.
  public var catalog: HandlerCatalog {
    HandlerCatalog(
      swift: Dictionary(uniqueKeysWithValues: handlers.map { ($0.key.text, $0.value is any BatchEventHandler) }))
  }
}

extension Event {
  /// The `payload` column parsed as a JSON object, when the source has one.
  public var payload: [String: JSONValue]? {
    guard case .json(let text) = row["payload"] ?? .null, case .object(let object) = JSONValue.parse(text) else {
      return nil
    }
    return object
  }
}
