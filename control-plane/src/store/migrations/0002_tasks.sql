-- The task plane (crate task-plane): async tasks, the webhooks they owe their clients, and
-- each key's webhook settings; the ledger learns media units. Times are unix milliseconds.
-- JSON documents are TEXT, as in 0001.

-- One row per task. A worker owns a task while `lease_until_ms` is in the future and
-- `lease_owner` is its claim token; a crashed worker's lease expires and another claims the
-- task again (every step is safe to repeat). `next_run_at_ms` is when a worker should next
-- look at it (submit, poll, give up at the deadline).
CREATE TABLE tasks (
    id                      TEXT PRIMARY KEY,
    key_id                  TEXT NOT NULL,
    team                    TEXT,
    model                   TEXT NOT NULL,
    operation               TEXT NOT NULL,
    dialect                 TEXT NOT NULL,
    input                   TEXT NOT NULL,
    metadata                TEXT,
    webhook_url             TEXT,
    idempotency_key         TEXT,
    request_hash            TEXT NOT NULL,
    state                   TEXT NOT NULL,
    progress                DOUBLE PRECISION,
    attempt                 BIGINT NOT NULL,
    attempts_log            TEXT NOT NULL,
    deployments             TEXT NOT NULL,
    handle                  TEXT,
    polls                   BIGINT NOT NULL,
    cancel_requested        BIGINT NOT NULL,
    result                  TEXT,
    outputs                 TEXT,
    error                   TEXT,
    error_status            BIGINT,
    usage                   TEXT,
    cost                    DOUBLE PRECISION,
    created_at_ms           BIGINT NOT NULL,
    started_at_ms           BIGINT,
    attempt_started_at_ms   BIGINT,
    completed_at_ms         BIGINT,
    deadline_at_ms          BIGINT NOT NULL,
    next_run_at_ms          BIGINT NOT NULL,
    lease_owner             TEXT,
    lease_until_ms          BIGINT,
    updated_at_ms           BIGINT NOT NULL
);
-- A retried submit with the same Idempotency-Key finds its task (NULL keys never collide).
CREATE UNIQUE INDEX tasks_idempotency ON tasks (key_id, idempotency_key);
-- Workers look only at unfinished tasks, by due time.
CREATE INDEX tasks_due ON tasks (next_run_at_ms) WHERE state IN ('queued', 'running');
CREATE INDEX tasks_key_created ON tasks (key_id, created_at_ms);

-- One row per webhook message. `id` is the `webhook-id`, the same on every attempt and
-- redelivery, so a receiver can deduplicate; `payload` is the exact body signed and sent.
CREATE TABLE webhook_deliveries (
    id                  TEXT PRIMARY KEY,
    task_id             TEXT NOT NULL,
    key_id              TEXT NOT NULL,
    url                 TEXT NOT NULL,
    event_type          TEXT NOT NULL,
    payload             TEXT NOT NULL,
    state               TEXT NOT NULL,
    attempts            BIGINT NOT NULL,
    next_attempt_at_ms  BIGINT NOT NULL,
    last_status         BIGINT,
    last_error          TEXT,
    lease_owner         TEXT,
    lease_until_ms      BIGINT,
    created_at_ms       BIGINT NOT NULL,
    delivered_at_ms     BIGINT,
    updated_at_ms       BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at_ms) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_task ON webhook_deliveries (task_id);

-- A key's webhook settings: its default URL and its signing secret (`whsec_…`). The secret
-- is an HMAC key the task plane must use to sign, so it is stored as is (unlike API keys).
CREATE TABLE webhook_settings (
    key_id          TEXT PRIMARY KEY,
    url             TEXT,
    secret          TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL
);

-- Media units in the ledger: images, seconds of audio or video, and their prices.
ALTER TABLE usage_records ADD COLUMN images BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN media_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN price_image DOUBLE PRECISION;
ALTER TABLE usage_records ADD COLUMN price_second DOUBLE PRECISION;
