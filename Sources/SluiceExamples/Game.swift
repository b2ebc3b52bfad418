public import Sluice

/// `award_xp`: payload `{"xp": n}`, n an integer from 1 to 10000. Adds n to
/// the actor's XP (and records the award so that it can be undone).
public struct AwardXP: BatchEventHandler {
  public let eventType = "award_xp"
  public init() {}

  public func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
    try handle(batch: [event], in: context)[0]
  }

  /// A run of awards in one statement: XP adds up, so their order within the run does not matter.
  public func handle(batch events: [Event], in context: HandlerContext) throws -> [Outcome] {
    var ids: [String?] = []
    var users: [String?] = []
    var amounts: [String?] = []
    let outcomes = events.map { event -> Outcome in
      if let tooLarge = Examples.oversizedPayload(event) { return .rejected(tooLarge) }
      guard let payload = event.payload else { return .rejected("payload must be a JSON object") }
      guard let xp = payload["xp"]?.integer, (1...10_000).contains(xp) else {
        return .rejected("payload.xp must be an integer from 1 to 10000")
      }
      ids.append(event.id)
      users.append(event.actor)
      amounts.append(String(xp))
      return .applied
    }
    guard !ids.isEmpty else { return outcomes }
    // Record every award, then add each user's sum to their total.
    try context.execute(
      """
      WITH awards AS (
        INSERT INTO game.xp_awards (action_id, user_id, xp)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[]) RETURNING user_id, xp),
      sums AS (SELECT user_id, sum(xp) AS xp FROM awards GROUP BY user_id)
      INSERT INTO game.user_xp (user_id, xp, level)
      SELECT user_id, xp, 1 + xp / 1000 FROM sums
      ON CONFLICT (user_id) DO UPDATE
        SET xp = game.user_xp.xp + EXCLUDED.xp, level = 1 + (game.user_xp.xp + EXCLUDED.xp) / 1000
      """, [PGArray.literal(ids), PGArray.literal(users), PGArray.literal(amounts)])
    return outcomes
  }
}

/// `undo`: payload `{"action_id": "<uuid>"}`. Reverses an applied `award_xp`
/// of the same actor, exactly once.
public struct Undo: EventHandler {
  public let eventType = "undo"
  public init() {}

  public func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
    if let tooLarge = Examples.oversizedPayload(event) { return .rejected(tooLarge) }
    guard let target = event.payload?["action_id"]?.string, Self.isUUID(target) else {
      return .rejected("payload.action_id must be a uuid")
    }
    let undone = try context.query(
      """
      UPDATE game.xp_awards SET undone_by = $2::uuid
      WHERE action_id = $1::uuid AND user_id = $3 AND undone_by IS NULL
      RETURNING xp
      """, [target, event.id, event.actor])
    if let xp = undone.scalar {
      try context.execute(
        "UPDATE game.user_xp SET xp = xp - $2::int, level = 1 + (xp - $2::int) / 1000 WHERE user_id = $1",
        [event.actor, xp])
      return .applied
    }
    // One reason for every other target: someone else's award, one undone
    // already, one that was not applied, an action that is no award, an id
    // that is nothing. Reasons that told them apart would tell a client the
    // status of every event whose id it can read (docs/handlers.md).
    return .rejected(Self.nothingToUndo)
  }

  /// The reason for every undo that has nothing of its actor's to undo.
  public static let nothingToUndo = "no applied award of yours to undo"

  static func isUUID(_ text: String) -> Bool {
    let hex = text.utf8.filter { $0 != UInt8(ascii: "-") }
    return text.utf8.count == 36 && hex.count == 32
      && hex.allSatisfy { (48...57).contains($0) || (97...102).contains($0) || (65...70).contains($0) }
      && [8, 13, 18, 23].allSatisfy { Array(text.utf8)[$0] == UInt8(ascii: "-") }
  }
}

/// Limits shared by the examples' handlers.
public enum Examples {
  /// A client payload larger than this is rejected before it is parsed.
  public static let maximumPayloadBytes = 16_384

  static func oversizedPayload(_ event: Event) -> String? {
    guard case .json(let text) = event.row["payload"] ?? .null, text.utf8.count > maximumPayloadBytes else {
      return nil
    }
    return "payload larger than \(maximumPayloadBytes) bytes"
  }
}
