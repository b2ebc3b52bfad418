import Glibc
import Sluice
import SluiceCLI

/// Test-only: `sluice` plus handlers that misbehave on purpose. Never packaged.
///
/// `crash`: adds 1 to the actor's `xp.totals`, but kills the whole process
/// when the payload says so (`{"abort": true}` or `{"exit": n}`), as a bug
/// in a Swift handler or a library it calls would.
struct CrashOnMark: EventHandler {
  let eventType = "crash"

  func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
    if event.payload?["abort"] != nil { abort() }
    if let code = event.payload?["exit"]?.integer { exit(Int32(code)) }
    try context.execute(
      "INSERT INTO xp.totals VALUES ($1, 1) ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + 1", [event.actor])
    return .applied
  }
}

/// `swift_emit`: queues a webhook delivery from a Swift handler
/// (`context.emit`) to the endpoint the payload names, then rejects if the
/// payload says so (its delivery must then never be sent).
struct EmitFromSwift: EventHandler {
  let eventType = "swift_emit"

  func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
    let endpoint = event.payload?["endpoint"]?.string ?? "edge"
    try context.emit(endpoint: endpoint, body: #"{"from": "swift", "actor": "\#(event.actor ?? "")"}"#)
    if event.payload?["reject"] != nil { return .rejected("asked to reject") }
    return .applied
  }
}

/// `swift_emit_batch`: a batch handler that queues a delivery to `edge` for
/// every event of its run, then rejects those whose payload says so:
/// against the contract (decide first, write only for applied events), as
/// a careless handler would. A rejected event's delivery must never be sent.
struct EmitFromSwiftBatch: BatchEventHandler {
  let eventType = "swift_emit_batch"

  func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
    try handle(batch: [event], in: context)[0]
  }

  func handle(batch events: [Event], in context: HandlerContext) throws -> [Outcome] {
    try events.map { event in
      try context.emit(endpoint: "edge", body: #"{"from": "swift batch", "event": "\#(event.id)"}"#, for: event)
      return event.payload?["reject"] != nil ? .rejected("asked to reject") : .applied
    }
  }
}

/// `swift_spawn`: writes a follow-up `award` into `xp.actions` naming the
/// actor the payload's `as` says (SPEC 13: the guard stamps or refuses it by
/// the handler's session, which acts as the event's actor).
struct SpawnFromSwift: EventHandler {
  let eventType = "swift_spawn"

  func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
    try context.execute(
      "INSERT INTO xp.actions (id, user_id, type, payload) VALUES ($1, $2, 'award', '{\"xp\": 7}')",
      [event.id + "-award", event.payload?["as"]?.string])
    return .applied
  }
}

SluiceCLI.main(handlers: [CrashOnMark(), EmitFromSwift(), EmitFromSwiftBatch(), SpawnFromSwift()])
