-- Alarms in the cloud (docs/cloud.md, "Alarms and notifications"): the current state of each alarm
-- instance, every transition, webhooks and their notifications. Every table has org_id with row-level
-- security enabled and forced, like the others.

CREATE TABLE alarms (
    org_id text NOT NULL,
    site text NOT NULL,
    rule text NOT NULL,
    device text NOT NULL,
    state text NOT NULL,
    severity text NOT NULL,
    acked bool NOT NULL,
    value double precision,
    text text NOT NULL,
    raised_us bigint,
    changed_us bigint NOT NULL,
    PRIMARY KEY (org_id, site, rule, device)
);

CREATE TABLE alarm_history (
    id bigserial PRIMARY KEY,
    org_id text NOT NULL,
    site text NOT NULL,
    rule text NOT NULL,
    device text NOT NULL,
    state text NOT NULL,
    previous text NOT NULL,
    severity text NOT NULL,
    acked bool NOT NULL,
    value double precision,
    text text NOT NULL,
    timestamp_us bigint NOT NULL,
    session bigint NOT NULL,
    seq bigint NOT NULL
);
CREATE INDEX alarm_history_site_time ON alarm_history (org_id, site, timestamp_us DESC, id DESC);

CREATE TABLE webhooks (
    id bigserial PRIMARY KEY,
    org_id text NOT NULL,
    url text NOT NULL,
    secret text NOT NULL,
    created_us bigint NOT NULL
);

CREATE TABLE notifications (
    id bigserial PRIMARY KEY,
    org_id text NOT NULL,
    webhook_id bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    site text NOT NULL,
    body jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts int NOT NULL DEFAULT 0,
    next_attempt_us bigint NOT NULL,
    last_error text,
    created_us bigint NOT NULL,
    delivered_us bigint
);
CREATE INDEX notifications_due ON notifications (org_id, next_attempt_us) WHERE state = 'pending';

-- Which organisations have notifications due, and from when: the notifier reads it without an
-- organisation (it holds no tenant data: an org id and a time), then opens each organisation's
-- transaction. Written only by the organisation's own transactions.
CREATE TABLE notify_due (
    org_id text PRIMARY KEY,
    due_us bigint NOT NULL
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['alarms', 'alarm_history', 'webhooks', 'notifications', 'notify_due'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY org_only ON %I USING (org_id = current_setting(''app.org_id'', true))'
                       ' WITH CHECK (org_id = current_setting(''app.org_id'', true))', t);
    END LOOP;
END
$$;
CREATE POLICY read_due_orgs ON notify_due FOR SELECT USING (true);
