//! The ledger: every usage record the edges ship, stored once, and what is read from it
//! (usage by group and time bucket, invoices, recent requests).
//!
//! Money: a record's `cost` (a float, USD) is kept as received and also as an integer count
//! of nano-USD (`round(cost × 10⁹)`); every sum is over the integers, so a total is exactly
//! the sum of its lines and of its records, and is printed from the integer (9 decimals).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Row, SqlValue, Tx};
use crate::{time, Error};

/// The price a record was served at, USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Uncached input tokens.
    pub input: f64,
    /// Cached input tokens (absent: billed as `input`).
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Output tokens.
    pub output: f64,
    /// Per image generated (media tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<f64>,
    /// Per second of audio or video (media tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<f64>,
}

/// One request as the edge metered it. Unknown fields are ignored (newer edges may send
/// more); the `Option` fields may be `null` or absent, every other field is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Unique per request: the ledger stores each once.
    pub request_id: String,
    /// Request start, unix milliseconds.
    pub timestamp_ms: u64,
    /// Gateway key id.
    pub key_id: String,
    /// Team id of the key.
    #[serde(default)]
    pub team: Option<String>,
    /// Public model name.
    pub model: String,
    /// Provider that answered (or was last tried).
    pub provider: String,
    /// Deployment that answered.
    pub deployment: String,
    /// Input tokens, cached included.
    pub input_tokens: u64,
    /// Cached input tokens.
    pub cached_input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Images generated (media tasks; absent means none).
    #[serde(default)]
    pub images: u64,
    /// Seconds of audio or video produced or transcribed (media tasks; absent means none).
    #[serde(default)]
    pub media_seconds: f64,
    /// Cost in USD.
    pub cost: f64,
    /// Price used for `cost`.
    #[serde(default)]
    pub price: Option<Price>,
    /// HTTP status the client saw.
    pub status: u16,
    /// Deployments tried.
    pub attempts: u32,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// Request to last byte.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Request to first byte.
    #[serde(default)]
    pub ttft_ms: Option<u64>,
}

/// Most records one `POST /edge/v1/usage` may carry.
pub const MAX_BATCH: usize = 10_000;
/// Longest id or name in a record.
const MAX_FIELD: usize = 256;
/// Largest single cost accepted (keeps nano-USD sums far from `i64::MAX`).
const MAX_COST_USD: f64 = 1_000_000.0;
/// Most seconds of media in one record (about 30 years).
const MAX_MEDIA_SECONDS: f64 = 1e9;

/// What an ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestOutcome {
    /// Records stored now.
    pub accepted: u64,
    /// Records already in the ledger (or repeated in the batch), not stored again.
    pub duplicates: u64,
}

/// `cost` (USD) as integer nano-USD, rounded half away from zero.
pub fn nano_usd(cost: f64) -> i64 {
    (cost * 1e9).round() as i64
}

/// Nano-USD as a decimal USD string with 9 decimals (`1234567` → `"0.001234567"`).
pub fn format_usd(nano: i64) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    let abs = nano.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// Parses `{"records": [...]}`, naming the record and field of the first problem.
pub fn parse_batch(body: &[u8]) -> Result<Vec<UsageRecord>, Error> {
    #[derive(Deserialize)]
    struct Batch {
        records: Vec<Value>,
    }
    let batch: Batch = crate::validate::json_body(body)?;
    if batch.records.len() > MAX_BATCH {
        return Err(Error::PayloadTooLarge(format!(
            "a batch holds at most {MAX_BATCH} records; got {}",
            batch.records.len()
        )));
    }
    batch
        .records
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let record: UsageRecord = crate::validate::from_value(value, &format!("records[{i}]"))?;
            check_record(&record).map_err(|message| {
                Error::invalid(format!("records[{i}]: {message}"), "invalid_value")
            })?;
            Ok(record)
        })
        .collect()
}

fn check_record(record: &UsageRecord) -> Result<(), String> {
    if record.request_id.is_empty() || record.key_id.is_empty() {
        return Err("`request_id` and `key_id` must not be empty".into());
    }
    for (name, value) in [
        ("request_id", record.request_id.as_str()),
        ("key_id", &record.key_id),
        ("team", record.team.as_deref().unwrap_or("")),
        ("model", &record.model),
        ("provider", &record.provider),
        ("deployment", &record.deployment),
    ] {
        if value.len() > MAX_FIELD {
            return Err(format!("`{name}` is longer than {MAX_FIELD} bytes"));
        }
    }
    let fits = |v: Option<u64>| v.is_none_or(|v| i64::try_from(v).is_ok());
    for (name, value) in [
        ("timestamp_ms", Some(record.timestamp_ms)),
        ("input_tokens", Some(record.input_tokens)),
        ("cached_input_tokens", Some(record.cached_input_tokens)),
        ("output_tokens", Some(record.output_tokens)),
        ("latency_ms", record.latency_ms),
        ("ttft_ms", record.ttft_ms),
    ] {
        if !fits(value) {
            return Err(format!("`{name}` is out of range"));
        }
    }
    if i64::try_from(record.images).is_err()
        || !(record.media_seconds.is_finite()
            && (0.0..=MAX_MEDIA_SECONDS).contains(&record.media_seconds))
    {
        return Err(format!(
            "`images` and `media_seconds` must be non-negative and at most {MAX_MEDIA_SECONDS}"
        ));
    }
    if !(record.cost.is_finite() && (0.0..=MAX_COST_USD).contains(&record.cost)) {
        return Err(format!("`cost` must be a number from 0 to {MAX_COST_USD}"));
    }
    if let Some(price) = &record.price {
        let prices = [
            Some(price.input),
            price.cached_input,
            Some(price.output),
            price.image,
            price.second,
        ];
        if prices
            .into_iter()
            .flatten()
            .any(|p| !p.is_finite() || p < 0.0)
        {
            return Err("`price` values must be non-negative numbers".into());
        }
    }
    Ok(())
}

const RECORD_COLUMNS: &str = "request_id, timestamp_ms, key_id, team, model, provider, \
     deployment, input_tokens, cached_input_tokens, output_tokens, cost, cost_nano_usd, \
     price_input, price_cached_input, price_output, status, attempts, stream, latency_ms, \
     ttft_ms, received_at_ms, images, media_seconds, price_image, price_second";
const RECORD_COLUMN_COUNT: usize = 25;
/// Rows per INSERT statement: few statements per batch, under both engines' parameter limits.
const ROWS_PER_INSERT: usize = 250;

fn record_params(record: &UsageRecord, received_at_ms: i64, out: &mut Vec<SqlValue>) {
    // Ranges were checked by `parse_batch`, so the casts below are exact.
    out.extend([
        SqlValue::from(record.request_id.as_str()),
        SqlValue::Int(record.timestamp_ms as i64),
        record.key_id.as_str().into(),
        record.team.as_deref().into(),
        record.model.as_str().into(),
        record.provider.as_str().into(),
        record.deployment.as_str().into(),
        SqlValue::Int(record.input_tokens as i64),
        SqlValue::Int(record.cached_input_tokens as i64),
        SqlValue::Int(record.output_tokens as i64),
        SqlValue::Real(record.cost),
        SqlValue::Int(nano_usd(record.cost)),
        record.price.map(|p| p.input).into(),
        record.price.and_then(|p| p.cached_input).into(),
        record.price.map(|p| p.output).into(),
        SqlValue::Int(i64::from(record.status)),
        SqlValue::Int(i64::from(record.attempts)),
        SqlValue::Int(i64::from(record.stream)),
        record.latency_ms.map(|v| v as i64).into(),
        record.ttft_ms.map(|v| v as i64).into(),
        SqlValue::Int(received_at_ms),
        SqlValue::Int(record.images as i64),
        SqlValue::Real(record.media_seconds),
        record.price.and_then(|p| p.image).into(),
        record.price.and_then(|p| p.second).into(),
    ]);
}

fn insert_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO usage_records ({RECORD_COLUMNS}) VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..RECORD_COLUMN_COUNT {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * RECORD_COLUMN_COUNT + column + 1));
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
    sql
}

/// Stores the records not yet in the ledger, in multi-row inserts inside the caller's
/// transaction; records seen before (or twice in this batch) count as duplicates.
pub fn ingest(
    tx: &mut dyn Tx,
    records: &[UsageRecord],
    received_at_ms: i64,
) -> Result<IngestOutcome, Error> {
    let mut accepted = 0;
    let full_chunk_sql = insert_sql(ROWS_PER_INSERT);
    let mut params = Vec::with_capacity(ROWS_PER_INSERT * RECORD_COLUMN_COUNT);
    for chunk in records.chunks(ROWS_PER_INSERT) {
        params.clear();
        for record in chunk {
            record_params(record, received_at_ms, &mut params);
        }
        let sql = if chunk.len() == ROWS_PER_INSERT {
            full_chunk_sql.clone()
        } else {
            insert_sql(chunk.len())
        };
        accepted += tx.execute(&sql, &params)?;
    }
    Ok(IngestOutcome {
        accepted,
        duplicates: records.len() as u64 - accepted,
    })
}

/// The dimension usage is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Key id.
    Key,
    /// Team id.
    Team,
    /// Public model name.
    Model,
    /// Provider.
    Provider,
    /// Deployment.
    Deployment,
}

impl GroupBy {
    /// Parses a `group_by` query value.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "key" => GroupBy::Key,
            "team" => GroupBy::Team,
            "model" => GroupBy::Model,
            "provider" => GroupBy::Provider,
            "deployment" => GroupBy::Deployment,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            GroupBy::Key => "key_id",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Deployment => "deployment",
        }
    }
}

/// The time bucket usage is summed over (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Clock hours.
    Hour,
    /// UTC days.
    Day,
    /// Calendar months.
    Month,
}

impl Bucket {
    /// Parses a `bucket` query value.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "hour" => Bucket::Hour,
            "day" => Bucket::Day,
            "month" => Bucket::Month,
            _ => return None,
        })
    }
}

/// Which records a usage read covers.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// First included millisecond.
    pub from_ms: Option<i64>,
    /// First excluded millisecond.
    pub to_ms: Option<i64>,
    /// Only this key id.
    pub key: Option<String>,
    /// Only this team id.
    pub team: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this provider.
    pub provider: Option<String>,
}

impl Filter {
    /// ` WHERE …` (possibly empty) and its parameters.
    fn where_clause(&self) -> (String, Vec<SqlValue>) {
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        let mut add = |condition: &str, value: SqlValue| {
            params.push(value);
            conditions.push(format!("{condition} ${}", params.len()));
        };
        if let Some(from) = self.from_ms {
            add("timestamp_ms >=", from.into());
        }
        if let Some(to) = self.to_ms {
            add("timestamp_ms <", to.into());
        }
        for (column, value) in [
            ("key_id", &self.key),
            ("team", &self.team),
            ("model", &self.model),
            ("provider", &self.provider),
        ] {
            if let Some(value) = value {
                add(&format!("{column} ="), value.as_str().into());
            }
        }
        if conditions.is_empty() {
            (String::new(), params)
        } else {
            (format!(" WHERE {}", conditions.join(" AND ")), params)
        }
    }
}

/// Sums over a set of records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Records.
    pub requests: i64,
    /// Input tokens, cached included.
    pub input_tokens: i64,
    /// Cached input tokens.
    pub cached_input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Spend, exact, in nano-USD.
    pub cost_nano_usd: i64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_nano_usd += other.cost_nano_usd;
    }

    fn from_columns(row: &Row, first: usize) -> Result<Self, Error> {
        Ok(Totals {
            requests: row.int(first)?,
            input_tokens: row.int(first + 1)?,
            cached_input_tokens: row.int(first + 2)?,
            output_tokens: row.int(first + 3)?,
            cost_nano_usd: row.int(first + 4)?,
        })
    }
}

/// The sums of [`Totals`], as SQL.
const SUMS: &str = "COUNT(*), CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cached_input_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT)";

/// [`Totals`] with the spend also as a decimal USD string, for JSON answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TotalsView {
    /// The integer sums.
    #[serde(flatten)]
    pub totals: Totals,
    /// Spend in USD, 9 decimals, from `cost_nano_usd`.
    pub cost_usd: String,
}

impl From<Totals> for TotalsView {
    fn from(totals: Totals) -> Self {
        TotalsView {
            cost_usd: format_usd(totals.cost_nano_usd),
            totals,
        }
    }
}

/// One group in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// Bucket start, unix milliseconds (absent without `bucket`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_start_ms: Option<i64>,
    /// Bucket start, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_start: Option<String>,
    /// The group's value (absent without `group_by`; `null` for records without a team).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Option<String>>,
    /// Its sums.
    #[serde(flatten)]
    pub totals: TotalsView,
}

/// What `GET /admin/v1/usage` answers.
#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    /// Rows by bucket, then group.
    pub rows: Vec<UsageRow>,
    /// Sums over every row.
    pub totals: TotalsView,
}

const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;

/// Usage matching `filter`, summed per `group_by` value and `bucket`.
pub fn usage(
    tx: &mut dyn Tx,
    filter: &Filter,
    group_by: Option<GroupBy>,
    bucket: Option<Bucket>,
) -> Result<UsageReport, Error> {
    let bucket_expression = bucket.map(|b| {
        // Months are not a fixed length: sum by day, then fold days into months below.
        let width = if b == Bucket::Hour {
            MS_PER_HOUR
        } else {
            MS_PER_DAY
        };
        format!("(timestamp_ms / {width}) * {width}")
    });
    let mut selected = Vec::new();
    selected.extend(bucket_expression.clone());
    selected.extend(group_by.map(|g| g.column().to_string()));
    let keys = selected.len();
    let (where_clause, params) = filter.where_clause();
    let mut sql = "SELECT ".to_string();
    for column in &selected {
        sql.push_str(column);
        sql.push_str(", ");
    }
    sql.push_str(SUMS);
    sql.push_str(" FROM usage_records");
    sql.push_str(&where_clause);
    if keys > 0 {
        sql.push_str(&format!(" GROUP BY {}", selected.join(", ")));
    }
    let mut merged: BTreeMap<(Option<i64>, Option<Option<String>>), Totals> = BTreeMap::new();
    for row in tx.query(&sql, &params)? {
        let totals = Totals::from_columns(&row, keys)?;
        if totals.requests == 0 {
            continue; // no GROUP BY over no records still yields one row of zeros
        }
        let mut column = 0;
        let bucket_start = match bucket {
            Some(b) => {
                column += 1;
                let start = row.int(0)?;
                Some(if b == Bucket::Month {
                    time::month_start_ms(start)
                } else {
                    start
                })
            }
            None => None,
        };
        let group = group_by.map(|_| row.opt_text(column)).transpose()?;
        merged
            .entry((bucket_start, group))
            .or_default()
            .add(&totals);
    }
    let mut all = Totals::default();
    let rows = merged
        .into_iter()
        .map(|((bucket_start_ms, group), totals)| {
            all.add(&totals);
            UsageRow {
                bucket_start: bucket_start_ms.map(time::format_rfc3339),
                bucket_start_ms,
                group,
                totals: totals.into(),
            }
        })
        .collect();
    Ok(UsageReport {
        rows,
        totals: all.into(),
    })
}

/// One invoice line: a key's use of a model in the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceLine {
    /// Key id.
    pub key_id: String,
    /// Public model name.
    pub model: String,
    /// Its sums.
    #[serde(flatten)]
    pub totals: TotalsView,
}

/// A team's invoice for a period.
#[derive(Debug, Clone, Serialize)]
pub struct Invoice {
    /// Team id.
    pub team: String,
    /// Team name, when the team still exists.
    pub team_name: Option<String>,
    /// Period start (included), RFC 3339 UTC.
    pub from: String,
    /// Period end (excluded), RFC 3339 UTC.
    pub to: String,
    /// Always `USD`.
    pub currency: &'static str,
    /// Lines by key, then model.
    pub lines: Vec<InvoiceLine>,
    /// Sums over every line (equal to the sums over the period's records).
    pub totals: TotalsView,
}

/// The invoice of `team` for `[from_ms, to_ms)`.
pub fn invoice(tx: &mut dyn Tx, team: &str, from_ms: i64, to_ms: i64) -> Result<Invoice, Error> {
    let team_name = tx
        .query_opt("SELECT name FROM teams WHERE id = $1", &[team.into()])?
        .map(|row| row.text(0))
        .transpose()?;
    let rows = tx.query(
        &format!(
            "SELECT key_id, model, {SUMS} FROM usage_records \
             WHERE team = $1 AND timestamp_ms >= $2 AND timestamp_ms < $3 \
             GROUP BY key_id, model ORDER BY key_id, model"
        ),
        &[team.into(), from_ms.into(), to_ms.into()],
    )?;
    let mut all = Totals::default();
    let lines = rows
        .iter()
        .map(|row| {
            let totals = Totals::from_columns(row, 2)?;
            all.add(&totals);
            Ok(InvoiceLine {
                key_id: row.text(0)?,
                model: row.text(1)?,
                totals: totals.into(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Invoice {
        team: team.to_string(),
        team_name,
        from: time::format_rfc3339(from_ms),
        to: time::format_rfc3339(to_ms),
        currency: "USD",
        lines,
        totals: all.into(),
    })
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

impl Invoice {
    /// The invoice as CSV: a header, one row per line, and a `TOTAL` row.
    pub fn to_csv(&self) -> String {
        let mut csv = String::from(
            "team,from,to,key_id,model,requests,input_tokens,cached_input_tokens,output_tokens,cost_usd\n",
        );
        let mut row = |key: &str, model: &str, t: &TotalsView| {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                csv_field(&self.team),
                self.from,
                self.to,
                csv_field(key),
                csv_field(model),
                t.totals.requests,
                t.totals.input_tokens,
                t.totals.cached_input_tokens,
                t.totals.output_tokens,
                t.cost_usd
            ));
        };
        for line in &self.lines {
            row(&line.key_id, &line.model, &line.totals);
        }
        row("TOTAL", "", &self.totals);
        csv
    }
}

/// A stored record, as the recent-requests list shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRecord {
    /// The record as the edge sent it.
    #[serde(flatten)]
    pub record: UsageRecord,
    /// Its cost in nano-USD, as summed.
    pub cost_nano_usd: i64,
    /// When the ledger stored it, unix milliseconds.
    pub received_at_ms: i64,
}

fn stored_from_row(row: &Row) -> Result<StoredRecord, Error> {
    let unsigned = |v: i64| v as u64;
    let price = match (row.opt_real(12)?, row.opt_real(14)?) {
        (Some(input), Some(output)) => Some(Price {
            input,
            cached_input: row.opt_real(13)?,
            output,
            image: row.opt_real(23)?,
            second: row.opt_real(24)?,
        }),
        _ => None,
    };
    Ok(StoredRecord {
        record: UsageRecord {
            request_id: row.text(0)?,
            timestamp_ms: unsigned(row.int(1)?),
            key_id: row.text(2)?,
            team: row.opt_text(3)?,
            model: row.text(4)?,
            provider: row.text(5)?,
            deployment: row.text(6)?,
            input_tokens: unsigned(row.int(7)?),
            cached_input_tokens: unsigned(row.int(8)?),
            output_tokens: unsigned(row.int(9)?),
            images: unsigned(row.int(21)?),
            media_seconds: row.opt_real(22)?.unwrap_or(0.0),
            cost: row.opt_real(10)?.unwrap_or(0.0),
            price,
            status: row.int(15)? as u16,
            attempts: row.int(16)? as u32,
            stream: row.int(17)? != 0,
            latency_ms: row.opt_int(18)?.map(unsigned),
            ttft_ms: row.opt_int(19)?.map(unsigned),
        },
        cost_nano_usd: row.int(11)?,
        received_at_ms: row.int(20)?,
    })
}

/// The `limit` most recent records matching `filter`, newest first.
pub fn recent(tx: &mut dyn Tx, filter: &Filter, limit: u32) -> Result<Vec<StoredRecord>, Error> {
    let (where_clause, mut params) = filter.where_clause();
    params.push(SqlValue::Int(i64::from(limit)));
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM usage_records{where_clause} \
         ORDER BY timestamp_ms DESC, request_id LIMIT ${}",
        params.len()
    );
    tx.query(&sql, &params)?
        .iter()
        .map(stored_from_row)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_usd_rounds_and_formats_exactly() {
        assert_eq!(nano_usd(0.1) + nano_usd(0.2), nano_usd(0.3));
        assert_eq!(nano_usd(0.000_000_000_4), 0);
        assert_eq!(nano_usd(0.000_000_000_6), 1);
        assert_eq!(format_usd(1_234_567), "0.001234567");
        assert_eq!(format_usd(12_000_000_001), "12.000000001");
        assert_eq!(format_usd(0), "0.000000000");
    }

    #[test]
    fn insert_sql_numbers_every_parameter() {
        let sql = insert_sql(2);
        assert!(sql.contains("($1, $2,"));
        assert!(sql.contains("($26, $27,"));
        assert!(sql.ends_with("$50) ON CONFLICT (request_id) DO NOTHING"));
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
