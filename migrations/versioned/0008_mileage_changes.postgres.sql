-- What plain PostgreSQL needs to take late fixes into the daily mileage: the
-- refresh loop recomputes the device-days that received fixes since its last
-- run, found by when each fix was received.

-- A run that takes in received fixes records up to when; the next run starts
-- from there, less a safety margin.
ALTER TABLE reporting.refresh_log ADD COLUMN received_before timestamptz;
COMMENT ON COLUMN reporting.refresh_log.received_before IS
    'Runs that take in newly received fixes: the fixes received before this time '
    'were taken in; -infinity when the relation was rebuilt empty. NULL for other '
    'runs.';

-- Fixes are appended, so the blocks of each partition follow received_at closely
-- and a block range summary skips nearly all of them. Created on the partitioned
-- table, it is created on every partition, present and future.
CREATE INDEX position_history_received_at
    ON tracksolid.position_history USING brin (received_at);
