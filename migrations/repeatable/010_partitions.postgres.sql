-- Monthly partitions of every partitioned table in schema tracksolid.
--
-- ensure_partitions(ahead) creates the partitions from last month to now + ahead,
-- and a partition for every month that has rows waiting in a default partition
-- (late or back-filled data); those rows move into their new partition before it
-- is attached, because a default partition may not hold rows of an attached range.
-- The migrate command runs it, and the API's refresh loop calls it periodically.
-- Returns the number of partitions created.
CREATE OR REPLACE FUNCTION tracksolid.ensure_partitions(
    ahead interval DEFAULT interval '3 months'
) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    parent regclass;
    parent_name text;
    key_column text;
    default_name text;
    month_start timestamptz;
    month_end timestamptz;
    child text;
    created integer := 0;
BEGIN
    -- The migrate command and every API worker call this; one at a time, so that
    -- two callers never race to create the same partition.
    PERFORM pg_advisory_xact_lock(hashtext('tracksolid.ensure_partitions'));
    FOR parent, parent_name, key_column IN
        SELECT c.oid::regclass, c.relname, a.attname
        FROM pg_partitioned_table p
        JOIN pg_class c ON c.oid = p.partrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0]
        WHERE n.nspname = 'tracksolid' AND p.partstrat = 'r'
    LOOP
        default_name := parent_name || '_default';
        FOR month_start IN
            SELECT DISTINCT m FROM (
                SELECT generate_series(
                    date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month',
                    date_trunc('month', (now() + ahead) AT TIME ZONE 'UTC'),
                    interval '1 month') AT TIME ZONE 'UTC' AS m
                UNION ALL
                SELECT w.m FROM tracksolid.default_partition_months(
                    format('tracksolid.%I', default_name), key_column) AS w(m)
            ) months
            ORDER BY 1
        LOOP
            month_end := ((month_start AT TIME ZONE 'UTC') + interval '1 month')
                AT TIME ZONE 'UTC';
            child := format('%s_p%s', parent_name,
                            to_char(month_start AT TIME ZONE 'UTC', 'YYYYMM'));
            CONTINUE WHEN to_regclass(format('tracksolid.%I', child)) IS NOT NULL;
            EXECUTE format(
                'CREATE TABLE tracksolid.%I (LIKE %s INCLUDING DEFAULTS '
                'INCLUDING CONSTRAINTS)', child, parent);
            IF to_regclass(format('tracksolid.%I', default_name)) IS NOT NULL THEN
                EXECUTE format(
                    'WITH moved AS (DELETE FROM tracksolid.%I WHERE %I >= $1 '
                    'AND %I < $2 RETURNING *) INSERT INTO tracksolid.%I '
                    'SELECT * FROM moved',
                    default_name, key_column, key_column, child)
                    USING month_start, month_end;
            END IF;
            EXECUTE format(
                'ALTER TABLE %s ATTACH PARTITION tracksolid.%I '
                'FOR VALUES FROM (%L) TO (%L)', parent, child, month_start, month_end);
            created := created + 1;
        END LOOP;
    END LOOP;
    RETURN created;
END $$;

-- Months (UTC) that have rows in a default partition.
CREATE OR REPLACE FUNCTION tracksolid.default_partition_months(
    default_partition text, key_column text
) RETURNS SETOF timestamptz
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF to_regclass(default_partition) IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT DISTINCT date_trunc(''month'', %I AT TIME ZONE ''UTC'') '
        'AT TIME ZONE ''UTC'' FROM %s', key_column, default_partition);
END $$;
