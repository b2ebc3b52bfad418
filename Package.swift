// swift-tools-version: 6.1
import PackageDescription

let upcoming: [SwiftSetting] = [
  .enableUpcomingFeature("ExistentialAny"),
  .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
  name: "Sluice",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "sluice", targets: ["sluice"]),
    .executable(name: "sluice-examples", targets: ["sluice-examples"]),
    .library(name: "Sluice", targets: ["Sluice"]),
    .library(name: "SluiceCore", targets: ["SluiceCore"]),
    .library(name: "SluiceCLI", targets: ["SluiceCLI"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    // Metrics: the standard API (handlers record their own) and its Prometheus backend.
    .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
    // Signals, graceful shutdown and the stop limit for the blocking daemon threads.
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
  ],
  targets: [
    .systemLibrary(
      name: "CLibPQ",
      pkgConfig: "libpq",
      providers: [.apt(["libpq-dev"])]
    ),
    // libcurl (HTTP client for webhooks) and libcrypto (HMAC-SHA256), as libpq is used.
    .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
    .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
    // The SQL migrations in sql/, embedded in the binary.
    .target(
      name: "SluiceSchema",
      path: "sql",
      exclude: ["examples", "roles.sql"],
      resources: [
        .embedInCode("001_schema.sql"), .embedInCode("002_ledger_high_water.sql"),
        .embedInCode("003_poison_and_limits.sql"), .embedInCode("004_outbox.sql"),
        .embedInCode("005_retention.sql"), .embedInCode("006_outbox_body_limit.sql"),
        .embedInCode("007_ledger_partitions.sql"), .embedInCode("008_outcomes.sql"),
        .embedInCode("009_identity.sql"), .embedInCode("010_retention_replays_and_outbox.sql"),
      ]
    ),
    // Pure: decides, never touches a socket, the clock or the environment.
    .target(name: "SluiceCore", swiftSettings: upcoming),
    // The only module that imports libpq.
    .target(
      name: "SluicePostgres",
      dependencies: ["CLibPQ", "SluiceCore"],
      swiftSettings: upcoming
    ),
    // The only module that imports libcurl and libcrypto: webhook deliveries.
    .target(name: "SluiceHTTP", dependencies: ["CCurl", "CCrypto", "SluiceCore"], swiftSettings: upcoming),
    // Public API for handler authors and the daemon's assembly.
    .target(
      name: "Sluice",
      dependencies: [
        "SluiceCore", "SluicePostgres", "SluiceSchema", "SluiceHTTP",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "CoreMetrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus"),
      ],
      swiftSettings: upcoming
    ),
    // The command line, reusable by any daemon that adds Swift handlers.
    .target(
      name: "SluiceCLI",
      dependencies: [
        "Sluice",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "UnixSignals", package: "swift-service-lifecycle"),
      ],
      swiftSettings: upcoming
    ),
    .executableTarget(name: "sluice", dependencies: ["SluiceCLI"], swiftSettings: upcoming),
    // The examples of SPEC section 7 and the daemon that carries their Swift handlers.
    .target(
      name: "SluiceExamples",
      dependencies: ["Sluice", "SluiceCore", .product(name: "Metrics", package: "swift-metrics")],
      swiftSettings: upcoming),
    .executableTarget(
      name: "sluice-examples", dependencies: ["SluiceCLI", "SluiceExamples"], swiftSettings: upcoming),
    // Test-only: `sluice` with handlers that crash on purpose (poison-event tests).
    .executableTarget(
      name: "sluice-fixtures", dependencies: ["Sluice", "SluiceCLI"], path: "Tests/Fixtures/sluice-fixtures",
      swiftSettings: upcoming),
    // The fuzz corpus and the README's examples are read from the source tree (#filePath), not bundled.
    .testTarget(
      name: "SluiceCoreTests", dependencies: ["SluiceCore"], exclude: ["Corpus"], swiftSettings: upcoming),
    .testTarget(
      name: "SluiceTests",
      dependencies: [
        "Sluice", "SluicePostgres", "SluiceCore", "SluiceExamples", "SluiceHTTP",
        .product(name: "Metrics", package: "swift-metrics"),
      ],
      exclude: [
        "ReadmeExamples/add_handler.sql", "ReadmeExamples/edge_function.sql", "ReadmeExamples/receiver.py",
        "ReadmeExamples/outcomes_api.sql", "ReadmeExamples/outcomes_electric.txt",
        "ReadmeExamples/outcomes_powersync.yaml",
      ],
      swiftSettings: upcoming
    ),
  ]
)
