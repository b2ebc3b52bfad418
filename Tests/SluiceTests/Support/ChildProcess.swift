import Foundation
import Synchronization

/// A `sluice` process started by a test, its output collected as it comes.
final class ChildProcess: @unchecked Sendable {
  let process = Process()
  private let out = OutputBuffer()
  private let err = OutputBuffer()

  init(_ executable: String, _ arguments: [String], environment: [String: String]) throws {
    // A name is one of the built binaries; an absolute path is any program (e.g. `ip netns exec`).
    process.executableURL =
      executable.hasPrefix("/")
      ? URL(fileURLWithPath: executable) : TestCluster.binDirectory.appendingPathComponent(executable)
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SLUICE_") }
    env.merge(environment) { $1 }
    process.environment = env
    let stdout = Pipe()
    let stderr = Pipe()
    process.standardOutput = stdout
    process.standardError = stderr
    try process.run()
    // One plain reading thread per pipe. (Foundation's readabilityHandler,
    // cleared from inside itself at end of file, crashed the test process
    // once in realloc under load.)
    for (pipe, buffer) in [(stdout, out), (stderr, err)] {
      let handle = pipe.fileHandleForReading
      let thread = Thread {
        let fd = handle.fileDescriptor
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
          let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
          if count > 0 {
            buffer.append(Data(chunk[0..<count]))
          } else if count < 0 && errno == EINTR {
            continue
          } else {
            break
          }
        }
        buffer.finish()
        withExtendedLifetime(handle) {}
      }
      thread.start()
    }
  }

  var pid: Int32 { process.processIdentifier }
  var standardOutput: String { out.text }
  var standardError: String { err.text }
  var outputLines: [String] { standardOutput.split(separator: "\n").map(String.init) }
  var outputLineCount: Int { out.newlines }

  func signal(_ number: Int32) { kill(process.processIdentifier, number) }

  /// Waits for exit; returns the status, or nil (after SIGKILL) on timeout.
  func waitForExit(seconds: Double = 10) -> Int32? {
    let deadline = Date().addingTimeInterval(seconds)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning {
      signal(SIGKILL)
      process.waitUntilExit()
      return nil
    }
    process.waitUntilExit()
    // Everything the process wrote is read once both pipes reached end of file.
    let drained = Date().addingTimeInterval(5)
    while !(out.isFinished && err.isFinished) && Date() < drained { usleep(1_000) }
    return process.terminationStatus
  }

  /// Peak resident set size so far (VmHWM), in bytes.
  var peakRSS: Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
      let kilobytes = line.split(separator: " ").compactMap { Int($0) }.first
      return kilobytes.map { $0 * 1024 }
    }
    return nil
  }

  deinit {
    if process.isRunning {
      signal(SIGKILL)
      process.waitUntilExit()
    }
  }
}

/// Parses JSON lines into dictionaries.
func jsonObjects(_ lines: [String]) -> [[String: Any]] {
  lines.compactMap { line in
    (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
  }
}

/// Bytes a pipe delivered, with a running count of newlines.
final class OutputBuffer: Sendable {
  private let state = Mutex<(bytes: [UInt8], newlines: Int, finished: Bool)>(([], 0, false))

  func append(_ data: Data) {
    let count = data.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }
    state.withLock {
      $0.bytes.append(contentsOf: data)
      $0.newlines += count
    }
  }

  var text: String { state.withLock { String(decoding: $0.bytes, as: UTF8.self) } }
  var newlines: Int { state.withLock { $0.newlines } }
  /// The pipe reached end of file.
  var isFinished: Bool { state.withLock { $0.finished } }
  func finish() { state.withLock { $0.finished = true } }
}
