public import Sluice

/// `order_placed`: reserves stock if there is enough. Declined orders
/// (`out_of_stock`, `unknown_product`) are still processed: the ledger says
/// `applied`, `shop.order_status` says why. A quantity outside 1…1000 is `rejected`.
public struct PlaceOrder: EventHandler {
  public let eventType = "order_placed"
  public init() {}

  public func handle(_ event: Event, in context: HandlerContext) throws -> Outcome {
    guard case .int(let quantity) = event.row["quantity"] ?? .null, (1...1000).contains(quantity) else {
      return .rejected("bad_quantity")
    }
    guard let product = event.row.text("product_id") else { return .rejected("unknown_product") }
    // One statement: reserve if enough stock, and record the order's status either way.
    try context.execute(
      """
      WITH reserved AS (
        UPDATE shop.products SET stock = stock - $3::int WHERE id = $2 AND stock >= $3::int RETURNING id),
      known AS (SELECT id FROM shop.products WHERE id = $2)
      INSERT INTO shop.order_status (order_id, status, reason, updated_at)
      SELECT $1::uuid,
             CASE WHEN EXISTS (SELECT 1 FROM reserved) THEN 'placed' ELSE 'declined' END,
             CASE WHEN EXISTS (SELECT 1 FROM reserved) THEN NULL
                  WHEN EXISTS (SELECT 1 FROM known) THEN 'out_of_stock' ELSE 'unknown_product' END,
             now()
      ON CONFLICT (order_id) DO UPDATE
        SET status = EXCLUDED.status, reason = EXCLUDED.reason, updated_at = EXCLUDED.updated_at
      """, [event.id, product, String(quantity)])
    return .applied
  }
}

/// The examples' Swift handlers (SPEC section 7); `restock` is a SQL handler.
public enum ExampleHandlers {
  public static var all: [any EventHandler] { [AwardXP(), Undo(), PlaceOrder()] }
}
