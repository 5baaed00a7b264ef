-- When each fix was stored, so that the daily mileage refresh finds every fix
-- committed since its last run, however long after it was received: a sink or
-- database outage, a Kafka backlog or a replayed topic commits fixes hours or
-- days after received_at.

-- A column default is filled in by inserts that leave the column out, as the
-- sinks do (they COPY an explicit column list). now() is the inserting
-- transaction's start, not its commit: refresh_mileage_daily_changes allows
-- for the transactions in progress while it runs.
--
-- now() is STABLE, so PostgreSQL evaluates it once here and stores the value in
-- the catalog for the rows already present: no rewrite and no scan, even under
-- NOT NULL, on every partition the ALTER recurses to. Those rows therefore
-- read as stored at this migration, and the first refresh after it recomputes
-- the last 30 days once. Partitions created later copy the column and its
-- default (LIKE ... INCLUDING DEFAULTS).
ALTER TABLE tracksolid.position_history
    ADD COLUMN stored_at timestamptz NOT NULL DEFAULT now();
COMMENT ON COLUMN tracksolid.position_history.stored_at IS
    'When the row was stored: the start of the transaction that inserted it. Rows '
    'older than this column hold the time it was added.';

-- Rows are appended, so each partition's blocks follow stored_at and a block
-- range summary skips nearly all of them. autosummarize has autovacuum
-- summarise each range as soon as it is full; until then the newest blocks are
-- unsummarised and always read, which is what a search for new rows wants.
-- Created on the partitioned table, it is created on every partition, present
-- and future. The build reads the whole table once, under this migration's lock.
CREATE INDEX position_history_stored_at
    ON tracksolid.position_history USING brin (stored_at)
    WITH (autosummarize = on);

-- Only the search for new fixes used received_at's index, and it now searches
-- by stored_at; nothing else looks fixes up by when they were received.
DROP INDEX tracksolid.position_history_received_at;

ALTER TABLE reporting.refresh_log RENAME COLUMN received_before TO stored_before;
COMMENT ON COLUMN reporting.refresh_log.stored_before IS
    'Runs that take in newly stored fixes: every fix stored (position_history.'
    'stored_at) before this time was taken in; -infinity when the relation was '
    'rebuilt empty. NULL for other runs.';
