-- What the poll worker and backfill record beyond the base tables: which
-- worker made each Open API call, which app key and process own a cached
-- token, and how far each backfill job has got, so an interrupted backfill
-- resumes where it stopped.

ALTER TABLE tracksolid.ingestion_log ADD COLUMN worker text;

ALTER TABLE tracksolid.api_token_cache
    ADD COLUMN app_key text,
    ADD COLUMN owner text;

CREATE TABLE tracksolid.backfill_progress (
    job text NOT NULL,
    method text NOT NULL,
    key text NOT NULL,
    done_until timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, method, key)
);
COMMENT ON TABLE tracksolid.backfill_progress IS
    'Per backfill job, Open API method and device (or device batch), the time up to which history has been published.';
