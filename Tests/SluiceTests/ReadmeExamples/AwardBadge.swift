import Metrics
import Sluice

/// Gives the actor a badge: payload {"badge": "early-bird"}.
struct AwardBadge: EventHandler {
  let eventType = "award_badge"
  /// On /metrics beside Sluice's own series (created on first use, after `sluice run` set up metrics).
  static let awarded = Counter(label: "game_badges_awarded_total")

  func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
    guard let badge = event.payload?["badge"]?.string, !badge.isEmpty else {
      return .rejected("payload.badge must be a non-empty string")
    }
    try context.execute(
      "INSERT INTO game.badges (user_id, badge) VALUES ($1, $2) ON CONFLICT DO NOTHING",
      [event.actor, badge])
    Self.awarded.increment()
    return .applied
  }
}
