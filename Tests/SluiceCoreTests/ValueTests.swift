import Testing

@testable import SluiceCore

@Suite struct ValueDecoderTests {
  func decode(_ text: String, _ oid: UInt32) -> ColumnValue {
    ValueDecoder.decode(.text(ArraySlice(Array(text.utf8))), typeOID: oid)
  }

  @Test func scalars() {
    #expect(decode("t", TypeOID.bool) == .bool(true))
    #expect(decode("f", TypeOID.bool) == .bool(false))
    #expect(decode("-32768", TypeOID.int2) == .int(-32768))
    #expect(decode("2147483647", TypeOID.int4) == .int(2_147_483_647))
    #expect(decode("-9223372036854775808", TypeOID.int8) == .int(Int64.min))
    #expect(decode("1.5", TypeOID.float8) == .float(1.5))
    #expect(decode("Infinity", TypeOID.float4) == .float(.infinity))
    #expect(decode("12345678901234567890.000001", TypeOID.numeric) == .numeric("12345678901234567890.000001"))
    #expect(decode("héllo", TypeOID.text) == .text("héllo"))
    #expect(decode("x", TypeOID.varchar) == .text("x"))
    #expect(
      decode("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", TypeOID.uuid) == .uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))
    #expect(decode("{\"a\": 1}", TypeOID.jsonb) == .json("{\"a\": 1}"))
    #expect(decode("2024-05-01", TypeOID.date) == .date("2024-05-01"))
    #expect(decode("\\x00ff10", TypeOID.bytea) == .bytes([0, 255, 16]))
    #expect(decode("happy", 16_400) == .text("happy"), "enums and unknown types are text")
    #expect(ValueDecoder.decode(.null, typeOID: TypeOID.int4) == .null)
    #expect(ValueDecoder.decode(.unchangedToast, typeOID: TypeOID.text) == .unchangedToast)
  }

  @Test func timestamps() {
    #expect(decode("2024-05-01 12:00:00.5+00", TypeOID.timestamptz) == .timestamp("2024-05-01T12:00:00.5Z"))
    #expect(decode("2024-05-01 12:00:00+05:30", TypeOID.timestamptz) == .timestamp("2024-05-01T12:00:00+05:30"))
    #expect(decode("2024-05-01 12:00:00-03", TypeOID.timestamptz) == .timestamp("2024-05-01T12:00:00-03:00"))
    #expect(decode("2024-05-01 12:00:00.123456", TypeOID.timestamp) == .timestamp("2024-05-01T12:00:00.123456"))
    #expect(decode("infinity", TypeOID.timestamptz) == .timestamp("infinity"))
    #expect(decode("0044-03-15 00:00:00+00 BC", TypeOID.timestamptz) == .timestamp("0044-03-15 00:00:00+00 BC"))
  }

  @Test func arrays() {
    #expect(decode("{1,2,NULL}", 1007) == .array([.int(1), .int(2), .null]))
    #expect(decode("{}", 1009) == .array([]))
    #expect(
      decode("{\"a b\",\"c\\\"d\",\"NULL\",e}", 1009)
        == .array([.text("a b"), .text("c\"d"), .text("NULL"), .text("e")]))
    #expect(decode("{{1,2},{3,4}}", 1016) == .array([.array([.int(1), .int(2)]), .array([.int(3), .int(4)])]))
    #expect(decode("[0:1]={7,8}", 1007) == .array([.int(7), .int(8)]))
    #expect(decode("{t,f}", 1000) == .array([.bool(true), .bool(false)]))
    #expect(decode("{\"\\\\x01\"}", 1001) == .array([.bytes([1])]))
    #expect(decode("{\"2024-01-01 00:00:00+00\"}", 1185) == .array([.timestamp("2024-01-01T00:00:00Z")]))
    #expect(decode("{broken", 1007) == .text("{broken"), "malformed arrays stay text")
    #expect(
      ValueDecoder.decode(.text(ArraySlice(Array("{sad,happy}".utf8))), typeOID: 16_401, arrayOfText: true)
        == .array([.text("sad"), .text("happy")]))
  }

  @Test func malformedScalarsFallBackToText() {
    #expect(decode("12x", TypeOID.int4) == .text("12x"))
    #expect(decode("maybe", TypeOID.bool) == .text("maybe"))
    #expect(decode("\\x0", TypeOID.bytea) == .text("\\x0"))
  }
}

@Suite struct JSONTests {
  func render(_ value: ColumnValue) -> String {
    var writer = JSONWriter()
    writer.value(value)
    return String(decoding: writer.bytes, as: UTF8.self)
  }

  @Test func escapesStrings() {
    #expect(render(.text("a\"b\\c\n\u{01}é")) == "\"a\\\"b\\\\c\\n\\u0001é\"")
    #expect(render(.text("")) == "\"\"")
  }

  @Test func rendersEveryKind() {
    #expect(render(.null) == "null")
    #expect(render(.bool(true)) == "true")
    #expect(render(.int(-3)) == "-3")
    #expect(render(.float(0.25)) == "0.25")
    #expect(render(.float(.nan)) == "\"NaN\"")
    #expect(render(.numeric("10.50")) == "10.50")
    #expect(render(.numeric("-Infinity")) == "\"-Infinity\"")
    #expect(render(.json("{\"a\":[1]}")) == "{\"a\":[1]}")
    #expect(render(.bytes([0, 255])) == "\"AP8=\"")
    #expect(render(.array([.int(1), .null])) == "[1,null]")
  }

  @Test func base64MatchesRFC4648() {
    let cases: [(String, String)] = [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")]
    for (plain, encoded) in cases { #expect(Base64.encode(Array(plain.utf8)) == encoded) }
  }

  @Test func postgresTimeFormatsISO() {
    #expect(PostgresTime.iso8601(0) == "2000-01-01T00:00:00Z")
    #expect(PostgresTime.iso8601(1_500_000) == "2000-01-01T00:00:01.500000Z")
    #expect(PostgresTime.iso8601(-1) == "1999-12-31T23:59:59.999999Z")
    // Found by the fuzzer: extreme values overflowed instead of printing.
    #expect(PostgresTime.iso8601(.max) == "infinity")
    #expect(PostgresTime.iso8601(.min) == "-infinity")
    #expect(PostgresTime.iso8601(252_455_615_999_999_999) == "9999-12-31T23:59:59.999999Z")
    // 2024-02-29 12:34:56 UTC is unix 1709210096.
    #expect(PostgresTime.iso8601(PostgresTime.fromUnix(microseconds: 1_709_210_096_000_000)) == "2024-02-29T12:34:56Z")
  }
}

@Suite struct ChangeFormatterTests {
  @Test func printsTransactionAsLines() throws {
    var formatter = ChangeFormatter()
    #expect(try formatter.line(for: .relation(Fixtures.relation), at: LSN(1)) == nil)
    let begin = try formatter.line(for: Fixtures.messages[0], at: LSN(2)).map { String(decoding: $0, as: UTF8.self) }
    #expect(begin?.hasPrefix("{\"kind\":\"begin\",\"xid\":731,\"final_lsn\":\"1/100\"") == true)
    let insert = try formatter.line(for: .insert(Insert(relationID: 16_385, new: Fixtures.row)), at: LSN(3))
    #expect(
      insert.map { String(decoding: $0, as: UTF8.self) }
        == "{\"kind\":\"insert\",\"xid\":731,\"lsn\":\"0/3\",\"relation\":\"game.actions\",\"new\":{\"id\":\"6f1c1a52-0000-4000-8000-000000000001\",\"user_id\":\"alice\",\"xp\":10,\"payload\":{\"xp\": 10}}}"
    )
    let delete = try formatter.line(for: .delete(Delete(relationID: 16_385, oldKey: Fixtures.keyRow)), at: LSN(4))
    #expect(
      delete.map { String(decoding: $0, as: UTF8.self) }?.hasSuffix(
        "\"key\":{\"id\":\"6f1c1a52-0000-4000-8000-000000000001\"}}") == true)
    let commit = try formatter.line(for: Fixtures.messages[1], at: LSN(5)).map { String(decoding: $0, as: UTF8.self) }
    #expect(commit?.contains("\"end_lsn\":\"1/130\"") == true)
  }

  @Test func tableFilterHoldsBackBegin() throws {
    var formatter = ChangeFormatter(tables: ["other.table"])
    _ = try formatter.line(for: .relation(Fixtures.relation), at: LSN(1))
    #expect(try formatter.line(for: Fixtures.messages[0], at: LSN(2)) == nil)
    #expect(try formatter.line(for: .insert(Insert(relationID: 16_385, new: Fixtures.row)), at: LSN(3)) == nil)
    #expect(try formatter.line(for: Fixtures.messages[1], at: LSN(4)) == nil, "no change printed, no commit")

    var shown = ChangeFormatter(tables: ["game.actions"])
    _ = try shown.line(for: .relation(Fixtures.relation), at: LSN(1))
    #expect(try shown.line(for: Fixtures.messages[0], at: LSN(2)) == nil)
    let first = try shown.line(for: .insert(Insert(relationID: 16_385, new: Fixtures.row)), at: LSN(3))
    let text = first.map { String(decoding: $0, as: UTF8.self) } ?? ""
    #expect(text.split(separator: "\n").count == 2, "the held begin comes first")
    #expect(try shown.line(for: Fixtures.messages[1], at: LSN(4)) != nil)
  }

  @Test func changeForUnknownRelationThrows() {
    var formatter = ChangeFormatter()
    #expect(throws: RowDecodeError.self) {
      try formatter.line(for: .insert(Insert(relationID: 99, new: Fixtures.row)), at: LSN(1))
    }
  }

  @Test func tupleWidthMismatchThrows() {
    var formatter = ChangeFormatter()
    _ = try? formatter.line(for: .relation(Fixtures.relation), at: LSN(1))
    #expect(throws: RowDecodeError.self) {
      try formatter.line(for: .insert(Insert(relationID: 16_385, new: TupleData([.null]))), at: LSN(2))
    }
  }
}
