import Glibc

/// Buffered output to a file descriptor with write(2): one syscall per
/// 64 KiB or per flush, not per line.
public final class FileOutput: @unchecked Sendable {
  private var buffer: [UInt8] = []
  private let descriptor: Int32
  private let capacity: Int

  public init(descriptor: Int32, capacity: Int = 1 << 16) {
    self.descriptor = descriptor
    self.capacity = capacity
    buffer.reserveCapacity(capacity)
  }

  public static let standardOutput = FileOutput(descriptor: 1)

  public func write(_ bytes: UnsafeRawBufferPointer) {
    buffer.append(contentsOf: bytes)
    if buffer.count >= capacity { flush() }
  }

  public func write(_ text: String) {
    var text = text
    text.withUTF8 { write(UnsafeRawBufferPointer($0)) }
  }

  public func flush() {
    var offset = 0
    while offset < buffer.count {
      let written = buffer.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
      if written < 0 {
        if errno == EINTR { continue }
        break  // EPIPE and friends: the reader went away
      }
      offset += written
    }
    buffer.removeAll(keepingCapacity: true)
  }
}

/// One line on standard error, written at once.
public func printError(_ text: String) {
  let bytes = Array((text + "\n").utf8)
  _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}
