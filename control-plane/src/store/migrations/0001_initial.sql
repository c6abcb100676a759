-- Keys, teams, admin keys and the usage ledger. Times are unix seconds unless named *_ms.
-- JSON documents (model globs, metadata) are TEXT so both engines read them the same way.

CREATE TABLE teams (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    metadata    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- team_id is not a foreign key: a team with only revoked keys may be deleted, and those keys
-- (and the ledger) keep the id it had.
CREATE TABLE keys (
    id          TEXT PRIMARY KEY,
    label       TEXT,
    team_id     TEXT,
    models      TEXT NOT NULL,
    expires_at  BIGINT,
    metadata    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX keys_team ON keys (team_id);

-- A key's secrets, as SHA-256 hex only. expires_at NULL is the current secret; a rotated-out
-- secret keeps working until its expires_at (the end of its grace period).
CREATE TABLE key_secrets (
    sha256      TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL REFERENCES keys (id),
    hint        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT
);
CREATE INDEX key_secrets_key ON key_secrets (key_id);

CREATE TABLE admin_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    sha256      TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- One row: the edge snapshot's version, bumped in the same transaction as every key change.
CREATE TABLE key_snapshot_version (
    id          BIGINT PRIMARY KEY,
    version     BIGINT NOT NULL
);
INSERT INTO key_snapshot_version (id, version) VALUES (1, 0);

-- The ledger: one row per request, stored once (request_id). cost is the edge's float as
-- received; cost_nano_usd (rounded to 1e-9 USD) is what every sum uses, so totals are exact.
CREATE TABLE usage_records (
    request_id          TEXT PRIMARY KEY,
    timestamp_ms        BIGINT NOT NULL,
    key_id              TEXT NOT NULL,
    team                TEXT,
    model               TEXT NOT NULL,
    provider            TEXT NOT NULL,
    deployment          TEXT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cost                DOUBLE PRECISION NOT NULL,
    cost_nano_usd       BIGINT NOT NULL,
    price_input         DOUBLE PRECISION,
    price_cached_input  DOUBLE PRECISION,
    price_output        DOUBLE PRECISION,
    status              BIGINT NOT NULL,
    attempts            BIGINT NOT NULL,
    stream              BIGINT NOT NULL,
    latency_ms          BIGINT,
    ttft_ms             BIGINT,
    received_at_ms      BIGINT NOT NULL
);
CREATE INDEX usage_records_time ON usage_records (timestamp_ms);
CREATE INDEX usage_records_team_time ON usage_records (team, timestamp_ms);
CREATE INDEX usage_records_key_time ON usage_records (key_id, timestamp_ms);
