// The numbered SQL files beside this one, embedded in the binary so that
// `sluice migrate` needs no files at run time. To add a migration: add
// `NNN_name.sql` here, list it in Package.swift's SluiceSchema resources,
// and append it below.

/// A schema migration: applied once, in order, recorded in `sluice.schema_migrations`.
public struct Migration: Sendable {
  public var version: Int
  public var name: String
  public var sql: String
}

public enum SchemaMigrations {
  public static let all: [Migration] = [
    Migration(version: 1, name: "001_schema", sql: String(decoding: PackageResources._01_schema_sql, as: UTF8.self)),
    Migration(
      version: 2, name: "002_ledger_high_water",
      sql: String(decoding: PackageResources._02_ledger_high_water_sql, as: UTF8.self)),
    Migration(
      version: 3, name: "003_poison_and_limits",
      sql: String(decoding: PackageResources._03_poison_and_limits_sql, as: UTF8.self)),
    Migration(version: 4, name: "004_outbox", sql: String(decoding: PackageResources._04_outbox_sql, as: UTF8.self)),
    Migration(
      version: 5, name: "005_retention", sql: String(decoding: PackageResources._05_retention_sql, as: UTF8.self)),
    Migration(
      version: 6, name: "006_outbox_body_limit",
      sql: String(decoding: PackageResources._06_outbox_body_limit_sql, as: UTF8.self)),
    Migration(
      version: 7, name: "007_ledger_partitions",
      sql: String(decoding: PackageResources._07_ledger_partitions_sql, as: UTF8.self)),
    Migration(version: 8, name: "008_outcomes", sql: String(decoding: PackageResources._08_outcomes_sql, as: UTF8.self)),
    Migration(version: 9, name: "009_identity", sql: String(decoding: PackageResources._09_identity_sql, as: UTF8.self)),
    Migration(
      version: 10, name: "010_retention_replays_and_outbox",
      sql: String(decoding: PackageResources._10_retention_replays_and_outbox_sql, as: UTF8.self)),
  ]
}
