-- When each fix was stored, as on plain PostgreSQL, so that position_history has
-- one shape on both. The continuous aggregate tracks changed rows itself and
-- nothing looks fixes up by stored_at here, so no index on it.
--
-- now() is STABLE: the rows already present get the value of this migration
-- through the catalog, on the hypertable and each of its chunks, without a
-- rewrite; later inserts that leave the column out (the sinks) get their
-- transaction's start.
ALTER TABLE tracksolid.position_history
    ADD COLUMN stored_at timestamptz NOT NULL DEFAULT now();
COMMENT ON COLUMN tracksolid.position_history.stored_at IS
    'When the row was stored: the start of the transaction that inserted it. Rows '
    'older than this column hold the time it was added.';

-- Nothing writes it on TimescaleDB; renamed so that the table matches plain
-- PostgreSQL's.
ALTER TABLE reporting.refresh_log RENAME COLUMN received_before TO stored_before;
COMMENT ON COLUMN reporting.refresh_log.stored_before IS
    'Runs that take in newly stored fixes: every fix stored (position_history.'
    'stored_at) before this time was taken in; -infinity when the relation was '
    'rebuilt empty. NULL for other runs.';
