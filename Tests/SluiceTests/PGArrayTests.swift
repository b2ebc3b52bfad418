import SluicePostgres
import Testing

/// Array literals carry whole batches as one parameter: Postgres must read back exactly what was sent.
@Suite struct PGArrayTests {
  @Test func roundTripsTrickyValuesThroughPostgres() throws {
    let db = try TestDatabase("pgarray")
    let values: [String?] = [
      "plain", "", nil, "NULL", "with,comma", "{braces}", "quote\"inside", "back\\slash", "\\\"both\\\"",
      " spaced ", "héllo → 世界", "rtl \u{202E}evil", "line\nbreak\ttab",
    ]
    let literal = PGArray.literal(values)
    let result = try db.sql("SELECT unnest($1::text[]) AS v", [literal])
    #expect(result.rows.map { $0[0] } == values, "\(literal)")
    #expect(PGArray.literal([String?]()) == "{}")
  }
}
