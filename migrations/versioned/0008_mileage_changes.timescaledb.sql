-- The refresh log's record of received fixes taken in, as on plain PostgreSQL,
-- so that the table has one shape on both. TimescaleDB's continuous aggregate
-- tracks changed rows itself and never writes it; nothing looks fixes up by
-- received_at, so no index on it.
ALTER TABLE reporting.refresh_log ADD COLUMN received_before timestamptz;
COMMENT ON COLUMN reporting.refresh_log.received_before IS
    'Runs that take in newly received fixes: the fixes received before this time '
    'were taken in; -infinity when the relation was rebuilt empty. NULL for other '
    'runs.';
