//! The ledger: idempotent ingest, usage totals that equal the sum of the records, invoices
//! (JSON and CSV) and recent requests, on SQLite and on PostgreSQL.

mod common;

use common::{record, with, Engine, Plane, START_MS};
use serde_json::{json, Value};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// Deterministic pseudo-random numbers (no seeds from the environment: failures reproduce).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// What the test expects a set of records to sum to, computed from the records themselves.
#[derive(Debug, Default, PartialEq)]
struct Sums {
    requests: i64,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    cost_nano_usd: i64,
}

impl Sums {
    fn of<'a>(records: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut sums = Sums::default();
        for r in records {
            sums.requests += 1;
            sums.input_tokens += r["input_tokens"].as_i64().unwrap();
            sums.cached_input_tokens += r["cached_input_tokens"].as_i64().unwrap();
            sums.output_tokens += r["output_tokens"].as_i64().unwrap();
            sums.cost_nano_usd += (r["cost"].as_f64().unwrap() * 1e9).round() as i64;
        }
        sums
    }

    fn from_json(value: &Value) -> Self {
        let field = |name: &str| {
            value[name]
                .as_i64()
                .unwrap_or_else(|| panic!("{name} in {value}"))
        };
        Sums {
            requests: field("requests"),
            input_tokens: field("input_tokens"),
            cached_input_tokens: field("cached_input_tokens"),
            output_tokens: field("output_tokens"),
            cost_nano_usd: field("cost_nano_usd"),
        }
    }
}

fn usd(nano: i64) -> String {
    format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000)
}

/// `count` varied records over four days from START_MS, keys k0–k3 in teams a/b, three models.
fn varied_records(count: usize) -> Vec<Value> {
    let mut rng = Lcg(7);
    (0..count)
        .map(|i| {
            let key = rng.next(4);
            let model = ["chat", "embed", "reason"][rng.next(3) as usize];
            let provider = ["openai", "anthropic"][rng.next(2) as usize];
            let status = [200, 200, 200, 502][rng.next(4) as usize];
            let cost = rng.next(5_000_000) as f64 / 1e7 + 1e-10 * rng.next(10) as f64;
            with(
                record(
                    &format!("req-{i}"),
                    START_MS + rng.next(4 * DAY_MS),
                    &format!("k{key}"),
                    Some(if key < 2 { "a" } else { "b" }),
                    cost,
                ),
                json!({
                    "model": model,
                    "provider": provider,
                    "input_tokens": rng.next(5000),
                    "cached_input_tokens": rng.next(100),
                    "output_tokens": rng.next(3000),
                    "status": status,
                    "attempts": 1 + rng.next(3),
                    "stream": rng.next(2) == 1,
                }),
            )
        })
        .collect()
}

async fn ingest(plane: &Plane, records: &[Value]) -> Value {
    let reply = plane.post_usage(records).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

async fn ingest_is_idempotent(engine: Engine) {
    let plane = Plane::new(engine).await;
    let batch: Vec<Value> = (0..3)
        .map(|i| record(&format!("r{i}"), START_MS + i, "k", None, 0.5))
        .collect();
    assert_eq!(
        ingest(&plane, &batch).await,
        json!({"accepted": 3, "duplicates": 0})
    );
    // The same batch again (an edge retrying after a lost answer) stores nothing.
    assert_eq!(
        ingest(&plane, &batch).await,
        json!({"accepted": 0, "duplicates": 3})
    );
    // Overlapping, with a repeat inside the batch itself.
    let overlapping = vec![
        batch[2].clone(),
        record("r3", START_MS + 3, "k", None, 0.5),
        record("r3", START_MS + 3, "k", None, 0.5),
    ];
    assert_eq!(
        ingest(&plane, &overlapping).await,
        json!({"accepted": 1, "duplicates": 2})
    );
    assert_eq!(
        ingest(&plane, &[]).await,
        json!({"accepted": 0, "duplicates": 0})
    );

    let usage = plane.admin_ok("GET", "/admin/v1/usage", None, 200).await;
    assert_eq!(usage["totals"]["requests"], 4);
    assert_eq!(usage["totals"]["cost_usd"], "2.000000000");
    let recent = plane
        .admin_ok("GET", "/admin/v1/requests?limit=100", None, 200)
        .await;
    assert_eq!(recent["requests"].as_array().unwrap().len(), 4);

    // A large batch crosses the multi-row insert boundaries; stored once all the same.
    let large: Vec<Value> = (0..1234)
        .map(|i| record(&format!("bulk-{i}"), START_MS, "k", None, 0.001))
        .collect();
    assert_eq!(
        ingest(&plane, &large).await,
        json!({"accepted": 1234, "duplicates": 0})
    );
    assert_eq!(
        ingest(&plane, &large).await,
        json!({"accepted": 0, "duplicates": 1234})
    );
    let usage = plane
        .admin_ok("GET", "/admin/v1/usage?key=k", None, 200)
        .await;
    assert_eq!(usage["totals"]["requests"], 1238);
    assert_eq!(usage["totals"]["cost_usd"], "3.234000000");
}

async fn usage_totals_equal_the_records(engine: Engine) {
    let plane = Plane::new(engine).await;
    let records = varied_records(600);
    ingest(&plane, &records).await;

    let all = plane.admin_ok("GET", "/admin/v1/usage", None, 200).await;
    assert_eq!(Sums::from_json(&all["totals"]), Sums::of(&records));
    assert_eq!(
        all["totals"]["cost_usd"],
        usd(Sums::of(&records).cost_nano_usd)
    );

    for group_by in ["key", "team", "model", "provider", "deployment"] {
        for bucket in ["hour", "day", "month"] {
            let report = plane
                .admin_ok(
                    "GET",
                    &format!("/admin/v1/usage?group_by={group_by}&bucket={bucket}"),
                    None,
                    200,
                )
                .await;
            assert_eq!(
                Sums::from_json(&report["totals"]),
                Sums::of(&records),
                "{group_by}/{bucket}"
            );
            let field = if group_by == "key" {
                "key_id"
            } else {
                group_by
            };
            let width = match bucket {
                "hour" => HOUR_MS,
                "day" => DAY_MS,
                _ => 0,
            };
            for row in report["rows"].as_array().unwrap() {
                let start = row["bucket_start_ms"].as_u64().unwrap();
                let matching = records.iter().filter(|r| {
                    let t = r["timestamp_ms"].as_u64().unwrap();
                    // Month buckets (width 0): every record is in January 2026.
                    let in_bucket = t
                        .checked_div(width)
                        .map_or(start == 1_767_225_600_000, |n| n * width == start);
                    in_bucket && r[field] == row["group"]
                });
                assert_eq!(
                    Sums::from_json(row),
                    Sums::of(matching),
                    "{group_by}/{bucket}: {row}"
                );
            }
        }
    }

    // Filters and the time window.
    let from = START_MS + DAY_MS;
    let to = START_MS + 2 * DAY_MS;
    let filtered = plane
        .admin_ok(
            "GET",
            &format!(
                "/admin/v1/usage?team=a&model=chat&provider=openai&from={}&to={}",
                from / 1000,
                to / 1000
            ),
            None,
            200,
        )
        .await;
    let expected = Sums::of(records.iter().filter(|r| {
        let t = r["timestamp_ms"].as_u64().unwrap();
        r["team"] == "a"
            && r["model"] == "chat"
            && r["provider"] == "openai"
            && (from..to).contains(&t)
    }));
    assert!(expected.requests > 0);
    assert_eq!(Sums::from_json(&filtered["totals"]), expected);
    let by_key = plane
        .admin_ok("GET", "/admin/v1/usage?key=k3&group_by=model", None, 200)
        .await;
    assert_eq!(
        Sums::from_json(&by_key["totals"]),
        Sums::of(records.iter().filter(|r| r["key_id"] == "k3"))
    );
}

async fn month_buckets_follow_the_calendar(engine: Engine) {
    let plane = Plane::new(engine).await;
    let jan_31_late = 1_769_903_999_000; // 2026-01-31T23:59:59Z
    let feb_1 = 1_769_904_000_000; // 2026-02-01T00:00:00Z
    ingest(
        &plane,
        &[
            record("jan", jan_31_late, "k", None, 1.0),
            record("feb-a", feb_1, "k", None, 2.0),
            record("feb-b", feb_1 + 27 * DAY_MS, "k", None, 4.0),
        ],
    )
    .await;
    let report = plane
        .admin_ok("GET", "/admin/v1/usage?bucket=month", None, 200)
        .await;
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    assert_eq!(rows[0]["bucket_start"], "2026-01-01T00:00:00Z");
    assert_eq!(rows[0]["cost_usd"], "1.000000000");
    assert_eq!(rows[1]["bucket_start"], "2026-02-01T00:00:00Z");
    assert_eq!(rows[1]["cost_usd"], "6.000000000");
    let days = plane
        .admin_ok(
            "GET",
            "/admin/v1/usage?bucket=day&from=2026-02-01",
            None,
            200,
        )
        .await;
    assert_eq!(days["rows"].as_array().unwrap().len(), 2);
    assert_eq!(days["rows"][0]["bucket_start"], "2026-02-01T00:00:00Z");
}

async fn invoices_total_the_records(engine: Engine) {
    let plane = Plane::new(engine).await;
    plane
        .admin_ok(
            "POST",
            "/admin/v1/teams",
            Some(json!({"id": "a", "name": "Team A"})),
            201,
        )
        .await;
    let mut records = varied_records(400);
    // Floats that do not add up exactly in binary: 0.1 + 0.2 must still bill 0.3.
    records.push(with(
        record("tenth", START_MS + 5, "k,odd", Some("a"), 0.1),
        json!({"model": "m\"q"}),
    ));
    records.push(with(
        record("fifth", START_MS + 6, "k,odd", Some("a"), 0.2),
        json!({"model": "m\"q"}),
    ));
    ingest(&plane, &records).await;

    let (from, to) = ("2026-01-15T00:00:00Z", "2026-01-17T12:00:00Z");
    let (from_ms, to_ms) = (START_MS, START_MS + 2 * DAY_MS + 12 * HOUR_MS);
    let in_invoice: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["team"] == "a" && (from_ms..to_ms).contains(&r["timestamp_ms"].as_u64().unwrap())
        })
        .collect();
    let outside = records.len() - in_invoice.len();
    assert!(
        in_invoice.len() > 50 && outside > 50,
        "the period and team must leave records out"
    );
    let expected = Sums::of(in_invoice.iter().copied());

    let invoice = plane
        .admin_ok(
            "GET",
            &format!("/admin/v1/invoices?team=a&from={from}&to={to}&format=json"),
            None,
            200,
        )
        .await;
    assert_eq!(invoice["team"], "a");
    assert_eq!(invoice["team_name"], "Team A");
    assert_eq!(invoice["from"], from);
    assert_eq!(invoice["to"], to);
    assert_eq!(Sums::from_json(&invoice["totals"]), expected);
    assert_eq!(invoice["totals"]["cost_usd"], usd(expected.cost_nano_usd));
    let mut line_sums = Sums::default();
    for line in invoice["lines"].as_array().unwrap() {
        let sums = Sums::from_json(line);
        let of_line = Sums::of(
            in_invoice
                .iter()
                .copied()
                .filter(|r| r["key_id"] == line["key_id"] && r["model"] == line["model"]),
        );
        assert_eq!(sums, of_line, "{line}");
        line_sums.requests += sums.requests;
        line_sums.input_tokens += sums.input_tokens;
        line_sums.cached_input_tokens += sums.cached_input_tokens;
        line_sums.output_tokens += sums.output_tokens;
        line_sums.cost_nano_usd += sums.cost_nano_usd;
    }
    assert_eq!(line_sums, expected);
    let odd = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key_id"] == "k,odd")
        .unwrap();
    assert_eq!(odd["cost_usd"], "0.300000000");

    // CSV: the same lines and total, quoted where needed.
    let csv = plane
        .send(
            "GET",
            &format!("/admin/v1/invoices?team=a&from={from}&to={to}&format=csv"),
            Some(common::ADMIN_KEY),
            &[],
            None,
        )
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = csv.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "team,from,to,key_id,model,requests,input_tokens,cached_input_tokens,output_tokens,cost_usd");
    assert_eq!(lines.len(), invoice["lines"].as_array().unwrap().len() + 2);
    assert!(
        text.contains(&format!(
            "a,{from},{to},\"k,odd\",\"m\"\"q\",2,200,40,100,0.300000000"
        )),
        "{text}"
    );
    let total = lines.last().unwrap();
    assert_eq!(
        *total,
        format!(
            "a,{from},{to},TOTAL,,{},{},{},{},{}",
            expected.requests,
            expected.input_tokens,
            expected.cached_input_tokens,
            expected.output_tokens,
            usd(expected.cost_nano_usd)
        )
    );
    // CSV cost column sums to the total, to the nano-dollar.
    let csv_sum: i64 = lines[1..lines.len() - 1]
        .iter()
        .map(|l| {
            let cost = l.rsplit(',').next().unwrap();
            let (whole, frac) = cost.split_once('.').unwrap();
            whole.parse::<i64>().unwrap() * 1_000_000_000 + frac.parse::<i64>().unwrap()
        })
        .sum();
    assert_eq!(csv_sum, expected.cost_nano_usd);

    // A team without records in the period has an empty invoice with zero totals.
    let empty = plane
        .admin_ok(
            "GET",
            "/admin/v1/invoices?team=nobody&from=2026-01-01&to=2026-02-01",
            None,
            200,
        )
        .await;
    assert_eq!(empty["lines"], json!([]));
    assert_eq!(empty["totals"]["cost_usd"], "0.000000000");
    assert_eq!(empty["team_name"], Value::Null);
}

fn status_of(i: u64) -> u16 {
    if i == 4 {
        502
    } else {
        200
    }
}

async fn recent_requests_newest_first(engine: Engine) {
    let plane = Plane::new(engine).await;
    let records: Vec<Value> = (0..5)
        .map(|i| {
            with(
                record(&format!("q{i}"), START_MS + i * 1000, "k", Some("t"), 0.25),
                json!({"attempts": i + 1, "status": status_of(i), "ttft_ms": 30,
                             "a_future_field": {"ignored": true}}),
            )
        })
        .collect();
    ingest(&plane, &records).await;
    let recent = plane
        .admin_ok("GET", "/admin/v1/requests?limit=3", None, 200)
        .await;
    let listed = recent["requests"].as_array().unwrap();
    let ids: Vec<&str> = listed
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["q4", "q3", "q2"]);
    assert_eq!(listed[0]["attempts"], 5);
    assert_eq!(listed[0]["status"], 502);
    assert_eq!(listed[0]["cost_nano_usd"], 250_000_000);
    assert_eq!(
        listed[0]["price"],
        json!({"input": 0.15, "cached_input": 0.075, "output": 0.6})
    );
    assert_eq!(listed[0]["ttft_ms"], 30);
    assert!(listed[0].get("a_future_field").is_none());
    // Every field the edge sent comes back as sent.
    let stored = &listed[2];
    for (name, value) in records[2].as_object().unwrap() {
        if name != "a_future_field" {
            assert_eq!(&stored[name], value, "{name}");
        }
    }
    // A record without a price keeps none.
    ingest(
        &plane,
        &[with(
            record("np", START_MS + 9000, "k", None, 0.0),
            json!({"price": null}),
        )],
    )
    .await;
    let recent = plane
        .admin_ok("GET", "/admin/v1/requests?limit=1", None, 200)
        .await;
    assert_eq!(recent["requests"][0]["price"], Value::Null);
    let filtered = plane
        .admin_ok("GET", "/admin/v1/requests?team=t&limit=1000", None, 200)
        .await;
    assert_eq!(filtered["requests"].as_array().unwrap().len(), 5);
}

on_both_engines!(
    ingest_is_idempotent,
    usage_totals_equal_the_records,
    month_buckets_follow_the_calendar,
    invoices_total_the_records,
    recent_requests_newest_first,
);
