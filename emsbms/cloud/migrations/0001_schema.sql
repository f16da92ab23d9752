-- The cloud schema (docs/cloud.md, "Database"). Every tenant table carries org_id, with row-level
-- security ENABLED and FORCED (the owner, the service role, is bound too) and one policy keyed on
-- current_setting('app.org_id', true): a session that did not set it sees no rows.
-- Timestamps are integer µs since the epoch (*_us), except telemetry's partition key ts.

CREATE TABLE orgs (
    org_id text PRIMARY KEY,
    token_hash text NOT NULL,
    created_us bigint
);

CREATE TABLE sites (
    org_id text NOT NULL,
    site text NOT NULL,
    username text UNIQUE,
    online bool NOT NULL DEFAULT false,
    last_seen_us bigint,
    bd_seq int,
    session bigint,
    desired_version int,
    applied_version int,
    config_status text,
    config_reason text,
    config_changed_us bigint,
    sync_ms double precision,
    PRIMARY KEY (org_id, site)
);

CREATE TABLE batches (
    org_id text NOT NULL,
    site text NOT NULL,
    stream text NOT NULL,
    session bigint NOT NULL,
    seq bigint NOT NULL,
    received_us bigint,
    PRIMARY KEY (org_id, site, stream, session, seq)
);

CREATE TABLE latest (
    org_id text NOT NULL,
    site text NOT NULL,
    address text NOT NULL,
    value double precision,
    text_value text,
    quality text,
    timestamp_us bigint,
    PRIMARY KEY (org_id, site, address)
);

CREATE TABLE channel_info (
    org_id text NOT NULL,
    site text NOT NULL,
    address text NOT NULL,
    unit text,
    kind text,
    description text,
    min double precision,
    max double precision,
    PRIMARY KEY (org_id, site, address)
);

CREATE TABLE devices (
    org_id text NOT NULL,
    site text NOT NULL,
    name text NOT NULL,
    bus text,
    protocol text,
    profile text,
    version text,
    hash text,
    PRIMARY KEY (org_id, site, name)
);

CREATE TABLE events (
    id bigserial PRIMARY KEY,
    org_id text NOT NULL,
    site text NOT NULL,
    timestamp_us bigint,
    kind text NOT NULL,
    device text,
    detail jsonb
);
CREATE INDEX events_site_time ON events (org_id, site, timestamp_us DESC);

CREATE TABLE profiles (
    org_id text,  -- NULL: a shipped profile, readable by every organisation, writable by none
    name text NOT NULL,
    version text NOT NULL,
    hash text NOT NULL,
    document jsonb NOT NULL,
    source text,
    created_us bigint,
    UNIQUE NULLS NOT DISTINCT (org_id, name, version)
);

CREATE TABLE site_configs (
    org_id text NOT NULL,
    site text NOT NULL,
    version int NOT NULL,
    body jsonb NOT NULL,
    created_us bigint,
    PRIMARY KEY (org_id, site, version)
);

CREATE TABLE commands (
    org_id text NOT NULL,
    site text NOT NULL,
    id text NOT NULL,
    address text NOT NULL,
    value jsonb,
    status text,
    detail text,
    round_trip_ms double precision,
    created_us bigint,
    PRIMARY KEY (org_id, id)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['orgs', 'sites', 'batches', 'latest', 'channel_info', 'devices', 'events',
                             'site_configs', 'commands'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY org_only ON %I USING (org_id = current_setting(''app.org_id'', true))'
                       ' WITH CHECK (org_id = current_setting(''app.org_id'', true))', t);
    END LOOP;
END
$$;

ALTER TABLE profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE profiles FORCE ROW LEVEL SECURITY;
-- Reading: shipped (org_id NULL) or own. Writing, updating, deleting: own only (policies of one
-- command are OR-ed, so the shipped rows are invisible to UPDATE and DELETE, and refused to INSERT).
CREATE POLICY read_shipped_or_own ON profiles FOR SELECT
    USING (org_id IS NULL OR org_id = current_setting('app.org_id', true));
CREATE POLICY org_only ON profiles USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));

-- Telemetry: native daily range partitions on ts (emsbms.cloud.database.ensure_partitions makes them
-- ahead, with the same RLS; retention drops whole partitions). With the timescaledb extension created
-- in this database (by a superuser, before this migration), a hypertable of 1-day chunks instead.
DO $$
DECLARE
    columns text := 'org_id text NOT NULL, site text NOT NULL, address text NOT NULL, ts timestamptz NOT NULL,'
        ' timestamp_us bigint NOT NULL, value double precision, text_value text, quality text NOT NULL,'
        ' historical bool NOT NULL, session bigint NOT NULL, seq bigint NOT NULL';
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE format('CREATE TABLE telemetry (%s)', columns);
        EXECUTE 'SELECT create_hypertable(''telemetry'', ''ts'', chunk_time_interval => interval ''1 day'')';
    ELSE
        IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
            RAISE NOTICE 'timescaledb is installed but not created in this database: telemetry uses native'
                ' partitions (CREATE EXTENSION timescaledb as a superuser before migrating for a hypertable)';
        END IF;
        EXECUTE format('CREATE TABLE telemetry (%s) PARTITION BY RANGE (ts)', columns);
    END IF;
END
$$;
CREATE INDEX telemetry_address_time ON telemetry (org_id, site, address, ts);
ALTER TABLE telemetry ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry FORCE ROW LEVEL SECURITY;
CREATE POLICY org_only ON telemetry USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));
