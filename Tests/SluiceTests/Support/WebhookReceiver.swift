import Foundation
import Testing

/// `scripts/webhook-receiver` on a free port of 127.0.0.1: it answers as
/// each URL path says and logs every request it got (headers, body, whether
/// the Standard Webhooks library verified it).
final class WebhookReceiver: @unchecked Sendable {
  let process: ChildProcess
  let logPath: String
  let port: Int
  let host: String

  init(secret: String? = nil, host: String = "127.0.0.1") throws {
    self.host = host
    logPath = NSTemporaryDirectory() + "sluice-receiver-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).jsonl"
    FileManager.default.createFile(atPath: logPath, contents: nil)
    let script = ExamplesTests.repository.appendingPathComponent("scripts/webhook-receiver").path
    process = try ChildProcess(
      "/usr/bin/env",
      ["python3", script, "--log", logPath, "--host", host] + (secret.map { ["--secret", $0] } ?? []),
      environment: [:])
    let deadline = Date().addingTimeInterval(20)
    var port: Int?
    while port == nil, Date() < deadline {
      port = process.outputLines.first { $0.hasPrefix("listening ") }.flatMap { Int($0.dropFirst(10)) }
      if port == nil { usleep(20_000) }
    }
    guard let port else { throw SetupError("the webhook receiver did not start: \(process.standardError)") }
    self.port = port
  }

  deinit {
    process.signal(SIGKILL)
    _ = process.waitForExit(seconds: 5)
    try? FileManager.default.removeItem(atPath: logPath)
  }

  func url(_ path: String) -> String { "http://\(host):\(port)\(path)" }

  /// Every request received so far, in arrival order.
  var requests: [Request] {
    let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    return jsonObjects(text.split(separator: "\n").map(String.init)).map(Request.init)
  }

  struct Request {
    let raw: [String: Any]
    var path: String { raw["path"] as? String ?? "" }
    var headers: [String: String] { raw["headers"] as? [String: String] ?? [:] }
    var id: String { headers["webhook-id"] ?? "" }
    var body: String { raw["body"] as? String ?? "" }
    var status: Int { raw["status"] as? Int ?? 0 }
    var arrived: Double { raw["t"] as? Double ?? 0 }
    /// true, or the library's error text.
    var verified: Any? { raw["verified"] }
    var bodyObject: [String: Any] {
      (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:]
    }
  }
}
