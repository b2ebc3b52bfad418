import Foundation
import SluicePostgres
import Testing

/// `sluice tail` against a real Postgres: the proof that the streaming core works.
@Suite(.serialized) struct TailTests {
  func startTail(_ db: TestDatabase, _ arguments: [String], publication: String = "sluice") throws -> ChildProcess {
    let tail = try ChildProcess(
      "sluice", ["tail"] + arguments,
      environment: ["SLUICE_DATABASE_URL": db.url, "SLUICE_PUBLICATION": publication, "SLUICE_LOG_LEVEL": "debug"])
    #expect(
      eventually(30, "tail to start streaming: \(tail.standardError)") { tail.standardError.contains("streaming") })
    return tail
  }

  @Test func decodesEveryTypeValueByValue() throws {
    let db = try TestDatabase("tailtypes")
    try db.sql(
      """
      CREATE TYPE mood AS ENUM ('sad', 'happy');
      CREATE TABLE every_type (
        id int4 PRIMARY KEY, small int2, big int8, exact numeric(20,4), real4 float4, real8 float8,
        flag bool, label text, short varchar(10), uid uuid, doc json, docb jsonb,
        at timestamp, atz timestamptz, day date, raw bytea, feeling mood,
        ints int4[], texts text[], moods mood[], nothing text);
      """)
    let tail = try startTail(db, ["--temporary", "--tables", "public.every_type"])
    try db.sql(
      """
      INSERT INTO every_type VALUES (1, -32768, 9223372036854775807, 12345678901234.5678, 1.5, -2.25,
        true, 'hé "quoted" \\ line
      break', 'short', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": {"c": null}}',
        '2024-02-29 12:34:56.789', '2024-02-29 12:34:56.789+02', '2024-02-29', '\\x00ff10', 'happy',
        '{1,NULL,3}', '{"x y","z"}', '{sad,happy}', NULL);
      UPDATE every_type SET label = 'changed' WHERE id = 1;
      DELETE FROM every_type WHERE id = 1;
      TRUNCATE every_type;
      """)
    #expect(try eventually(20, "4 changes") { tail.outputLines.count >= 6 })
    tail.signal(SIGTERM)
    #expect(tail.waitForExit() == 0)
    let objects = jsonObjects(tail.outputLines)
    #expect(objects.map { $0["kind"] as? String } == ["begin", "insert", "update", "delete", "truncate", "commit"])
    guard objects.count == 6, let new = objects[1]["new"] as? [String: Any] else {
      Issue.record("unexpected output: \(tail.standardOutput)")
      return
    }
    #expect(objects[1]["relation"] as? String == "public.every_type")
    #expect(new["id"] as? Int == 1)
    #expect(new["small"] as? Int == -32768)
    #expect((new["big"] as? NSNumber)?.int64Value == Int64.max)
    #expect((new["exact"] as? NSNumber)?.decimalValue == Decimal(string: "12345678901234.5678"))
    #expect(new["real4"] as? Double == 1.5)
    #expect(new["real8"] as? Double == -2.25)
    #expect(new["flag"] as? Bool == true)
    #expect(new["label"] as? String == "hé \"quoted\" \\ line\nbreak")
    #expect(new["short"] as? String == "short")
    #expect(new["uid"] as? String == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    #expect((new["doc"] as? [String: Any])?["a"] as? [Int] == [1, 2])
    #expect(((new["docb"] as? [String: Any])?["b"] as? [String: Any])?["c"] is NSNull)
    #expect(new["at"] as? String == "2024-02-29T12:34:56.789")
    #expect(new["atz"] as? String == "2024-02-29T10:34:56.789Z")
    #expect(new["day"] as? String == "2024-02-29")
    #expect(new["raw"] as? String == Data([0, 255, 16]).base64EncodedString())
    #expect(new["feeling"] as? String == "happy")
    #expect((new["ints"] as? [Any]).map { $0.map { ($0 as? Int).map(String.init) ?? "null" } } == ["1", "null", "3"])
    #expect(new["texts"] as? [String] == ["x y", "z"])
    #expect(new["moods"] as? [String] == ["sad", "happy"])
    #expect(new["nothing"] is NSNull)
    #expect((objects[2]["new"] as? [String: Any])?["label"] as? String == "changed")
    #expect(objects[3]["key"] as? [String: Int] == ["id": 1])
    #expect(objects[4]["relations"] as? [String] == ["public.every_type"])
    // LSNs are ordered within the transaction and the commit names its end.
    let lsns = objects[1...4].compactMap { ($0["lsn"] as? String).flatMap(parseLSN) }
    #expect(lsns == lsns.sorted() && lsns.count == 4)
    #expect(objects[5]["end_lsn"] is String)
  }

  @Test func bigTransactionStreamsWithFlatMemory() throws {
    let db = try TestDatabase("tailbig")
    try db.sql("CREATE TABLE big (id int8 PRIMARY KEY, payload text NOT NULL)")
    let tail = try startTail(db, ["--temporary"])
    let baseline = tail.peakRSS ?? 0
    try db.sql("INSERT INTO big SELECT g, repeat('x', 100) || g FROM generate_series(1, 100000) g")
    #expect(try eventually(120, "100k rows: \(tail.outputLineCount) lines") { tail.outputLineCount >= 100_002 })
    let peak = tail.peakRSS ?? Int.max
    tail.signal(SIGTERM)
    #expect(tail.waitForExit() == 0)
    let lines = tail.outputLines
    #expect(lines.count == 100_002)
    #expect(lines.last?.contains("\"kind\":\"commit\"") == true)
    #expect(lines[100_000].contains("\"id\":100000,"))
    // The output is ~15 MB; the process must not hold the transaction.
    print("tail RSS: baseline \(baseline / 1024) KiB, peak \(peak / 1024) KiB after 100,000 rows")
    #expect(peak - baseline < 24 * 1024 * 1024, "peak \(peak) vs baseline \(baseline)")
  }

  @Test func namedSlotSurvivesTerminatedWalsender() throws {
    let db = try TestDatabase("tailreconnect")
    try db.sql("CREATE TABLE items (id int4 PRIMARY KEY)")
    let tail = try startTail(db, ["--slot", "tail_reconnect"])
    var expected: [Int] = []
    var next = 1
    for round in 0..<4 {
      // Several transactions, then kill the walsender and write more while it is down.
      for _ in 0..<5 {
        try db.sql("INSERT INTO items SELECT g FROM generate_series(\(next), \(next + 9)) g")
        expected += Array(next...next + 9)
        next += 10
      }
      let count = expected.count
      #expect(try eventually(20, "round \(round)") { insertedIDs(tail).count >= count })
      let terminated = try db.scalar(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'tail_reconnect' AND active_pid IS NOT NULL"
      )
      #expect(terminated == "t")
      try db.sql("INSERT INTO items SELECT g FROM generate_series(\(next), \(next + 9)) g")
      expected += Array(next...next + 9)
      next += 10
    }
    let total = expected.count
    #expect(try eventually(30, "all rows after reconnects") { insertedIDs(tail).count >= total })
    tail.signal(SIGTERM)
    #expect(tail.waitForExit() == 0)
    let seen = insertedIDs(tail)
    #expect(seen == expected, "every change once, in order")
    #expect(tail.standardError.contains("reconnect"))
  }

  @Test func restartedTailContinuesWhereItStopped() throws {
    let db = try TestDatabase("tailresume")
    try db.sql("CREATE TABLE items (id int4 PRIMARY KEY)")
    let first = try startTail(db, ["--slot", "tail_resume"])
    try db.sql("INSERT INTO items VALUES (1), (2)")
    #expect(try eventually { insertedIDs(first) == [1, 2] })
    first.signal(SIGTERM)
    #expect(first.waitForExit() == 0)
    try db.sql("INSERT INTO items VALUES (3)")
    let second = try startTail(db, ["--slot", "tail_resume"])
    try db.sql("INSERT INTO items VALUES (4)")
    #expect(try eventually { insertedIDs(second) == [3, 4] })
    second.signal(SIGINT)
    #expect(second.waitForExit() == 0)
    #expect(insertedIDs(second) == [3, 4], "nothing printed twice across restarts")
  }
}

func insertedIDs(_ tail: ChildProcess) -> [Int] {
  jsonObjects(tail.outputLines).filter { $0["kind"] as? String == "insert" }
    .compactMap { ($0["new"] as? [String: Any])?["id"] as? Int }
}

func parseLSN(_ text: String) -> UInt64? {
  let parts = text.split(separator: "/")
  guard parts.count == 2, let high = UInt64(parts[0], radix: 16), let low = UInt64(parts[1], radix: 16) else {
    return nil
  }
  return high << 32 | low
}
