-- SPEC 10: delivered outbox rows are deleted after SLUICE_OUTBOX_RETENTION
-- (dead ones stay until resolved). Retention walks them oldest first.
CREATE INDEX outbox_delivered ON sluice.outbox (delivered_at) WHERE status = 'delivered';
