import Foundation
import Testing

@testable import SluiceCore

/// Seeded fuzzing of everything that reads bytes from the network: mutated
/// and truncated pgoutput messages must decode to a value or a typed error,
/// never trap or hang. The seed is printed; SLUICE_FUZZ_SEED and
/// SLUICE_FUZZ_ITERATIONS replay or lengthen a run.
@Suite struct FuzzTests {
  static var seed: UInt64 {
    ProcessInfo.processInfo.environment["SLUICE_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x5EED_5100
  }
  static var iterations: Int {
    ProcessInfo.processInfo.environment["SLUICE_FUZZ_ITERATIONS"].flatMap { Int($0) } ?? 200_000
  }

  /// The corpus: one file per message in Corpus/ (hex), kept in the repo.
  static func corpus() throws -> [[UInt8]] {
    let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Corpus")
    let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".hex") }
      .sorted()
    return try files.map { name in
      let text = try String(contentsOf: folder.appendingPathComponent(name), encoding: .utf8)
      let digits = Array(text.unicodeScalars.filter { $0.properties.isASCIIHexDigit }.map { Character($0) })
      return stride(from: 0, to: digits.count - 1, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
    }
  }

  @Test func corpusMatchesTheFixtures() throws {
    let corpus = try Self.corpus()
    let expected = (Fixtures.messages + Fixtures.streamed).map(PgOutputEncoder.encode)
    #expect(corpus.count >= expected.count)
    for message in expected {
      #expect(corpus.contains(message), "corpus lacks a fixture: run the test with SLUICE_WRITE_CORPUS=1")
    }
  }

  @Test func mutatedMessagesNeverTrap() throws {
    if ProcessInfo.processInfo.environment["SLUICE_WRITE_CORPUS"] != nil { try writeCorpus() }
    let corpus = try Self.corpus()
    var random = SplitMix64(seed: Self.seed)
    print("fuzz seed: \(Self.seed), iterations: \(Self.iterations)")
    var decoded = 0
    var errors = 0
    var cache = RelationCache()
    cache.apply(Fixtures.relation)
    var formatter = ChangeFormatter()
    _ = try? formatter.line(for: .relation(Fixtures.relation), at: .zero)
    for _ in 0..<Self.iterations {
      var bytes = corpus[Int.random(in: 0..<corpus.count, using: &random)]
      mutate(&bytes, &random)
      var decoder = PgOutputDecoder()
      if Bool.random(using: &random) {
        _ = try? decoder.decode(PgOutputEncoder.encode(.streamStart(StreamStart(xid: 1, firstSegment: true))))
      }
      do {
        let message = try decoder.decode(bytes)
        decoded += 1
        // Whatever decodes must also format and type without trapping.
        _ = try? formatter.line(for: message, at: LSN(1))
        if case .insert(let insert) = message { _ = try? cache.decode(insert.new, of: Fixtures.relation) }
      } catch {
        errors += 1
        #expect(!error.description.isEmpty)
      }
      // CopyData framing gets the same treatment.
      _ = try? ReplicationMessage.decode(bytes)
    }
    print("fuzz: \(decoded) decoded, \(errors) typed errors")
    #expect(decoded + errors == Self.iterations)
    #expect(errors > 0 && decoded > 0)
  }

  @Test func randomBytesNeverTrapTheJSONParser() {
    var random = SplitMix64(seed: Self.seed ^ 0x4A53_4F4E)
    let alphabet = Array("{}[]\",:0123456789.eE+-truefalsnl \\u\n\t".utf8)
    for _ in 0..<50_000 {
      let count = Int.random(in: 0..<64, using: &random)
      let bytes = (0..<count).map { _ in
        Bool.random(using: &random)
          ? alphabet[Int.random(in: 0..<alphabet.count, using: &random)] : UInt8.random(in: 0...255, using: &random)
      }
      _ = JSONValue.parse(String(decoding: bytes, as: UTF8.self))
    }
    // Deep nesting is refused, not recursed into.
    #expect(JSONValue.parse(String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)) == nil)
    #expect(JSONValue.parse("{\"xp\": 10}")?["xp"]?.integer == 10)
  }

  func mutate(_ bytes: inout [UInt8], _ random: inout SplitMix64) {
    let rounds = Int.random(in: 1...4, using: &random)
    for _ in 0..<rounds {
      switch Int.random(in: 0..<7, using: &random) {
      case 0 where !bytes.isEmpty:  // flip a bit
        let index = Int.random(in: 0..<bytes.count, using: &random)
        bytes[index] ^= 1 << UInt8.random(in: 0..<8, using: &random)
      case 1 where !bytes.isEmpty:  // set a byte to an interesting value
        let index = Int.random(in: 0..<bytes.count, using: &random)
        bytes[index] = [0, 0xFF, 0x7F, 0x80, 0x6E, 0x74, 0x62, 0x75, 0x4E, 0x4B, 0x4F].randomElement(using: &random)!
      case 2 where !bytes.isEmpty:  // truncate
        bytes.removeLast(Int.random(in: 1...bytes.count, using: &random))
      case 3:  // append junk
        bytes += (0..<Int.random(in: 1...16, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
      case 4 where bytes.count > 4:  // a huge or negative length field somewhere
        let index = Int.random(in: 1..<bytes.count - 3, using: &random)
        let value: [UInt8] = Bool.random(using: &random) ? [0x7F, 0xFF, 0xFF, 0xFF] : [0xFF, 0xFF, 0xFF, 0xFE]
        bytes.replaceSubrange(index..<index + 4, with: value)
      case 5 where bytes.count > 2:  // duplicate a slice
        let start = Int.random(in: 0..<bytes.count - 1, using: &random)
        let end = Int.random(in: start + 1...bytes.count, using: &random)
        bytes.insert(contentsOf: bytes[start..<end], at: Int.random(in: 0...bytes.count, using: &random))
      default:  // delete a byte
        if !bytes.isEmpty { bytes.remove(at: Int.random(in: 0..<bytes.count, using: &random)) }
      }
    }
  }

  func writeCorpus() throws {
    let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Corpus")
    for (index, message) in (Fixtures.messages + Fixtures.streamed).enumerated() {
      let hex = PgOutputEncoder.encode(message).map { String(format: "%02x", $0) }.joined()
      try (hex + "\n").write(
        to: folder.appendingPathComponent(String(format: "%02d.hex", index)), atomically: true, encoding: .utf8)
    }
  }
}
