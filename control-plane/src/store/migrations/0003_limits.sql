-- Limits and budgets shared by every edge instance (POST /edge/v1/admit).

-- A key's and a team's limits: the core's Quota as JSON ({"rpm","tpm","concurrent","budget"}),
-- NULL for none. Carried in the edge key snapshot.
ALTER TABLE keys ADD COLUMN limits TEXT;
ALTER TABLE teams ADD COLUMN limits TEXT;

-- The counter records of core::limits (token buckets, in-flight counts, budget ledgers), one
-- row per record, named like the edge's own (`switchyard/limits/key:<id>/budget`). Admission
-- locks the rows it needs (PostgreSQL: FOR UPDATE, in name order; SQLite: the write lock).
CREATE TABLE limit_counters (
    name        TEXT PRIMARY KEY,
    value       TEXT
);

-- What each admitted request holds until its usage record reaches the ledger. state is
-- `held` (the estimate is reserved) or `expired` (its record did not arrive in time: the
-- estimate was charged as spent, and the record, when it comes, corrects it).
CREATE TABLE limit_admissions (
    request_id          TEXT PRIMARY KEY,
    admission           TEXT NOT NULL,
    estimate_tokens     BIGINT NOT NULL,
    estimate_cost_nano  BIGINT NOT NULL,
    state               TEXT NOT NULL,
    admitted_at_ms      BIGINT NOT NULL,
    expires_at_ms       BIGINT NOT NULL
);
CREATE INDEX limit_admissions_expiry ON limit_admissions (state, expires_at_ms);
