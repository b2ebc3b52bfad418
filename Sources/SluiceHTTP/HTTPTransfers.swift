import CCurl
import Foundation
import Synchronization

/// One POST to make.
public struct HTTPRequest: Sendable {
  /// The caller's name for it, handed back in its outcome.
  public var tag: Int64
  public var url: String
  public var headers: [(name: String, value: String)]
  public var body: [UInt8]
  /// The whole exchange, connecting included.
  public var timeoutMilliseconds: Int

  public init(
    tag: Int64, url: String, headers: [(name: String, value: String)], body: [UInt8], timeoutMilliseconds: Int
  ) {
    self.tag = tag
    self.url = url
    self.headers = headers
    self.body = body
    self.timeoutMilliseconds = timeoutMilliseconds
  }
}

/// How a request ended.
public struct HTTPOutcome: Sendable {
  public var tag: Int64
  /// The answer's status; nil when there was none (connection failed, timed out).
  public var status: Int?
  /// `Retry-After` in seconds from now (delay-seconds or an HTTP-date), when answered with one.
  public var retryAfterSeconds: Int?
  /// Why there was no answer: libcurl's text for its error code, which names no host or URL.
  public var error: String?
  /// The first bytes of the answer's body, for `last_error`.
  public var bodyPrefix: String
  /// The body went on past `bodyPrefix`.
  public var bodyTruncated = false
  public var seconds: Double
}

/// Many POSTs at once from one thread, through one libcurl multi handle
/// (which keeps connections alive between requests). Not thread-safe,
/// except `wakeUp`, which any thread may call.
public final class HTTPTransfers: @unchecked Sendable {
  /// libcurl's global setup, once per process, before any handle.
  private static let initialised: Bool = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK

  private final class Transfer {
    let tag: Int64
    let easy: UnsafeMutableRawPointer
    var headers: UnsafeMutablePointer<curl_slist>?
    var prefix: [UInt8] = []
    var dropped = false
    let started = ContinuousClock.now
    init(tag: Int64, easy: UnsafeMutableRawPointer) {
      self.tag = tag
      self.easy = easy
    }
  }

  /// How much of an answer's body is kept (the rest is read and dropped).
  static let prefixBytes = 200
  /// The multi handle's address while it lives, for `wakeUp` from other threads.
  private let wakeTarget = Mutex<UInt>(0)
  private let handle: UnsafeMutableRawPointer
  private var transfers: [UnsafeMutableRawPointer: Transfer] = [:]

  public init() throws {
    guard Self.initialised, let handle = curl_multi_init() else { throw HTTPError("libcurl could not be initialised") }
    self.handle = handle
    wakeTarget.withLock { $0 = UInt(bitPattern: handle) }
  }

  deinit {
    cancelAll()
    wakeTarget.withLock { $0 = 0 }
    curl_multi_cleanup(handle)
  }

  /// Requests started and not yet finished.
  public var running: Int { transfers.count }

  public func start(_ request: HTTPRequest) throws {
    guard let easy = curl_easy_init() else { throw HTTPError("libcurl could not make a handle") }
    let transfer = Transfer(tag: request.tag, easy: easy)
    for header in request.headers {
      transfer.headers = curl_slist_append(transfer.headers, "\(header.name): \(header.value)")
    }
    // Silence curl's own "Expect: 100-continue" round trip for larger bodies.
    transfer.headers = curl_slist_append(transfer.headers, "Expect:")
    var ok = true
    func set(_ option: CURLoption, _ value: Int) { ok = ok && sluice_curl_set_long(easy, option, value) == CURLE_OK }
    func set(_ option: CURLoption, _ value: UnsafeRawPointer?) {
      ok = ok && sluice_curl_set_pointer(easy, option, value) == CURLE_OK
    }
    request.url.withCString { set(CURLOPT_URL, $0) }
    "http,https".withCString { set(CURLOPT_PROTOCOLS_STR, $0) }
    set(CURLOPT_NOSIGNAL, 1)
    set(CURLOPT_FOLLOWLOCATION, 0)
    set(CURLOPT_TIMEOUT_MS, request.timeoutMilliseconds)
    set(CURLOPT_CONNECTTIMEOUT_MS, min(request.timeoutMilliseconds, 10_000))
    set(CURLOPT_POST, 1)
    set(CURLOPT_POSTFIELDSIZE_LARGE, request.body.count)
    request.body.withUnsafeBytes { set(CURLOPT_COPYPOSTFIELDS, $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)) }
    set(CURLOPT_HTTPHEADER, UnsafeRawPointer(transfer.headers))
    "sluice".withCString { set(CURLOPT_USERAGENT, $0) }
    ok = ok && sluice_curl_set_write_function(easy, Self.write) == CURLE_OK
    set(CURLOPT_WRITEDATA, Unmanaged.passUnretained(transfer).toOpaque())
    guard ok, curl_multi_add_handle(handle, easy) == CURLM_OK else {
      curl_slist_free_all(transfer.headers)
      curl_easy_cleanup(easy)
      throw HTTPError("libcurl refused the request's options")
    }
    transfers[easy] = transfer
  }

  /// Keeps up to `prefixBytes` of an answer's body; drops the rest.
  private static let write: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = {
    bytes, size, count, context in
    let total = size * count
    guard let bytes, let context else { return total }
    let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
    let keep = min(total, HTTPTransfers.prefixBytes - transfer.prefix.count)
    if keep < total { transfer.dropped = true }
    if keep > 0 {
      bytes.withMemoryRebound(to: UInt8.self, capacity: keep) {
        transfer.prefix.append(contentsOf: UnsafeBufferPointer(start: $0, count: keep))
      }
    }
    return total
  }

  /// Moves every transfer on and returns the ones that finished.
  public func perform() -> [HTTPOutcome] {
    var stillRunning: Int32 = 0
    _ = curl_multi_perform(handle, &stillRunning)
    var outcomes: [HTTPOutcome] = []
    var queued: Int32 = 0
    while let message = curl_multi_info_read(handle, &queued) {
      guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle,
        let transfer = transfers[easy]
      else { continue }
      let code = sluice_curl_message_result(message)
      var outcome = HTTPOutcome(
        tag: transfer.tag, status: nil, retryAfterSeconds: nil, error: nil,
        bodyPrefix: String(decoding: transfer.prefix, as: UTF8.self), bodyTruncated: transfer.dropped,
        seconds: transfer.started.duration(to: .now).inSeconds)
      if code == CURLE_OK {
        var status = 0
        _ = sluice_curl_get_long(easy, CURLINFO_RESPONSE_CODE, &status)
        outcome.status = status
        outcome.retryAfterSeconds = Self.retryAfter(easy)
      } else {
        outcome.error = String(cString: curl_easy_strerror(code))
      }
      finish(transfer)
      outcomes.append(outcome)
    }
    return outcomes
  }

  /// `Retry-After`: delay-seconds, or an HTTP-date (RFC 9110 section 10.2.3).
  private static func retryAfter(_ easy: UnsafeMutableRawPointer) -> Int? {
    var header: UnsafeMutablePointer<curl_header>?
    guard curl_easy_header(easy, "Retry-After", 0, UInt32(CURLH_HEADER), -1, &header) == CURLHE_OK,
      let value = header?.pointee.value
    else { return nil }
    let text = String(cString: value).trimmingCharacters(in: .whitespaces)
    if let seconds = Int(text) { return max(0, seconds) }
    let date = curl_getdate(value, nil)
    guard date >= 0 else { return nil }
    return max(0, date - time(nil))
  }

  /// Waits until a transfer can move on, `wakeUp` is called, or the time passes.
  public func wait(milliseconds: Int) {
    _ = curl_multi_poll(handle, nil, 0, Int32(clamping: max(0, milliseconds)), nil)
  }

  /// Ends a `wait` early; any thread may call it.
  public func wakeUp() {
    wakeTarget.withLock { address in
      if let multi = UnsafeMutableRawPointer(bitPattern: address) { _ = curl_multi_wakeup(multi) }
    }
  }

  /// Abandons every transfer in flight.
  public func cancelAll() {
    for transfer in transfers.values { finish(transfer) }
  }

  private func finish(_ transfer: Transfer) {
    curl_multi_remove_handle(handle, transfer.easy)
    curl_easy_cleanup(transfer.easy)
    curl_slist_free_all(transfer.headers)
    transfers[transfer.easy] = nil
  }
}

public struct HTTPError: Error, CustomStringConvertible {
  public var description: String
  init(_ description: String) { self.description = description }
}

extension Duration {
  fileprivate var inSeconds: Double {
    Double(components.seconds) + Double(components.attoseconds) / 1e18
  }
}
