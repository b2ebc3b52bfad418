import Foundation
import Synchronization

/// A process started with `posix_spawn`: it gets its pipes and nothing
/// else of the test process's, and is reaped here. (It replaced Foundation's
/// `Process`, first suspected of the test process's heap corruption; the
/// cause was a closed `PGConnection` used again, see `PGConnection.close`.)
final class Spawned: Sendable {
  let pid: pid_t
  /// The exit status once reaped (the code, or the signal that ended it).
  private let reaped = Mutex<Int32?>(nil)

  /// `output`, `errors`: descriptors the child gets as its stdout and
  /// stderr (nil: the test process's own). It gets no other descriptor,
  /// default signal handling and an empty signal mask.
  init(_ command: [String], environment: [String: String]? = nil, output: Int32? = nil, errors: Int32? = nil) throws {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    if let output { posix_spawn_file_actions_adddup2(&actions, output, 1) }
    if let errors { posix_spawn_file_actions_adddup2(&actions, errors, 2) }
    guard closeFrom(&actions, 3) == 0 else { throw SetupError("posix_spawn_file_actions_addclosefrom_np failed") }
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var signals = sigset_t()
    sigemptyset(&signals)
    posix_spawnattr_setsigmask(&attributes, &signals)
    sigfillset(&signals)
    posix_spawnattr_setsigdefault(&attributes, &signals)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let argv = command.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let env = (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { env.forEach { free($0) } }
    var pid = pid_t()
    let result = posix_spawn(&pid, command[0], &actions, &attributes, argv, env)
    guard result == 0 else {
      throw SetupError("could not start \(command[0]): \(String(cString: strerror(result)))")
    }
    self.pid = pid
  }

  /// The exit status if the child exited (reaped then); never blocks.
  private func reap() -> Int32? {
    reaped.withLock { status in
      if let status { return status }
      var raw: Int32 = 0
      var got: pid_t
      repeat { got = waitpid(pid, &raw, WNOHANG) } while got == -1 && errno == EINTR
      guard got == pid else { return nil }
      // WIFEXITED: the exit code; otherwise the signal's number.
      status = raw & 0x7f == 0 ? (raw >> 8) & 0xff : raw & 0x7f
      return status
    }
  }

  var isRunning: Bool { reap() == nil }

  /// Sends a signal, unless the child is reaped (its pid may be another process's now).
  func signal(_ number: Int32) {
    reaped.withLock { status in
      if status == nil { kill(pid, number) }
    }
  }

  /// Waits for exit; returns the status, or nil (after SIGKILL) on timeout.
  func waitForExit(seconds: Double = 1e9) -> Int32? {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      if let status = reap() { return status }
      usleep(5_000)
    }
    signal(SIGKILL)
    while reap() == nil { usleep(5_000) }
    return nil
  }

  deinit { _ = waitForExit(seconds: 0) }
}

/// glibc's `pipe2` and `posix_spawn_file_actions_addclosefrom_np` (2.34),
/// which Swift does not import (they need _GNU_SOURCE).
private let pipe2Function = dlsym(nil, "pipe2").map {
  unsafeBitCast($0, to: (@convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32).self)
}
private let closeFromFunction = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np").map {
  unsafeBitCast($0, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32).self)
}

private func closeFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ lowest: Int32) -> Int32 {
  closeFromFunction?(actions, lowest) ?? -1
}

/// A pipe whose ends are closed on exec (a child gets one only by dup2).
private func closeOnExecPipe() throws -> (read: Int32, write: Int32) {
  var ends: [Int32] = [0, 0]
  guard let pipe2Function, pipe2Function(&ends, O_CLOEXEC) == 0 else {
    throw SetupError("pipe2: \(String(cString: strerror(errno)))")
  }
  return (ends[0], ends[1])
}

/// Reads a descriptor to end of file into `buffer` on a thread of its own, then closes it.
private func drain(_ fd: Int32, into buffer: OutputBuffer) {
  Thread {
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
      let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
      if count > 0 {
        buffer.append(chunk[0..<count])
      } else if count < 0 && errno == EINTR {
        continue
      } else {
        break
      }
    }
    close(fd)
    buffer.finish()
  }.start()
}

/// A `sluice` process started by a test, its output collected as it comes.
final class ChildProcess: Sendable {
  let process: Spawned
  private let out = OutputBuffer()
  private let err = OutputBuffer()

  init(_ executable: String, _ arguments: [String], environment: [String: String]) throws {
    // A name is one of the built binaries; an absolute path is any program (e.g. `ip netns exec`).
    let path = executable.hasPrefix("/") ? executable : TestCluster.binDirectory.appendingPathComponent(executable).path
    var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SLUICE_") }
    env.merge(environment) { $1 }
    let stdout = try closeOnExecPipe()
    let stderr: (read: Int32, write: Int32)
    do { stderr = try closeOnExecPipe() } catch {
      close(stdout.read)
      close(stdout.write)
      throw error
    }
    defer {
      close(stdout.write)
      close(stderr.write)
    }
    do {
      process = try Spawned([path] + arguments, environment: env, output: stdout.write, errors: stderr.write)
    } catch {
      close(stdout.read)
      close(stderr.read)
      throw error
    }
    drain(stdout.read, into: out)
    drain(stderr.read, into: err)
  }

  var pid: Int32 { process.pid }
  var isRunning: Bool { process.isRunning }
  var standardOutput: String { out.text }
  var standardError: String { err.text }
  var outputLines: [String] { standardOutput.split(separator: "\n").map(String.init) }
  var outputLineCount: Int { out.newlines }

  func signal(_ number: Int32) { process.signal(number) }

  /// Waits for exit; returns the status, or nil (after SIGKILL) on timeout.
  func waitForExit(seconds: Double = 10) -> Int32? {
    let status = process.waitForExit(seconds: seconds)
    // Everything the process wrote is read once both pipes reached end of file.
    let drained = Date().addingTimeInterval(5)
    while !(out.isFinished && err.isFinished) && Date() < drained { usleep(1_000) }
    return status
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

  func append(_ data: ArraySlice<UInt8>) {
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
