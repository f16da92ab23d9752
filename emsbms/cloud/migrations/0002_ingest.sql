-- Ingest's gap detection (emsbms/cloud/ingest_gaps.py, docs/cloud.md "Ingest"): which batches came
-- from the edge's backlog, and per stream and session the seq up to which every message was
-- received or reported lost.

ALTER TABLE batches ADD COLUMN historical bool NOT NULL DEFAULT false;

CREATE TABLE ingest_streams (
    org_id text NOT NULL,
    site text NOT NULL,
    stream text NOT NULL,
    session bigint NOT NULL,
    settled_seq bigint NOT NULL DEFAULT -1,
    PRIMARY KEY (org_id, site, stream, session)
);
ALTER TABLE ingest_streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE ingest_streams FORCE ROW LEVEL SECURITY;
CREATE POLICY org_only ON ingest_streams USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));
