//! Verification of a log longer than one read stretch, with payloads of every JSON shape: the chain verifies,
//! and rows altered, removed, renumbered or swapped anywhere (inside a stretch or across a stretch boundary)
//! are named by their first bad position.

use domain::event::{Action, Actor, EntityKind, EventData, StreamId};
use serde_json::{json, Value};
use sqlx::PgPool;
use store::{EventStore, NewCommand, NewEvent};

use crate::support::{fresh_pool, tamper};

/// Events in the test log: many of the verifier's read stretches (2,048 positions each, so 8,192 | 8,193 and
/// 16,384 | 16,385 are boundaries between two; a boundary of 4,096- or 8,192-position stretches too).
const EVENTS: i64 = 20_000;
const PER_COMMAND: i64 = 250;

/// A payload of awkward JSON: keys jsonb reorders (it sorts by length first), escapes, unicode, numbers of every
/// form serde_json keeps, nesting.
fn payload(seq: i64) -> Value {
    json!({
        "seq": seq,
        "b": {"zz": [seq, -seq, 0.5, 1e21, 18_446_744_073_709_551_615_u64, -9_223_372_036_854_775_808_i64],
              "a": null, "ab": true, "B": false},
        "aa": format!("line\nbreak \"quoted\" \\ tab\t é 😀 \u{1} #{seq}"),
        "": [{}, [], {"y": 1.25, "x": -2.5e-8}],
        "kind": if seq % 2 == 0 { json!("even") } else { json!({"odd": seq}) },
    })
}

fn event(stream: &StreamId, seq: i64) -> NewEvent {
    let payload = payload(seq);
    NewEvent::new(
        EventData {
            stream: stream.clone(),
            event_type: "TestHappened".to_owned(),
            schema_version: 1,
            after: (seq % 3 == 0).then(|| payload["b"].clone()),
            before: (seq % 5 == 0).then(|| json!({"was": seq - 1})),
            payload,
            action: Action::Updated,
            note: (seq % 7 == 0).then(|| format!("note \"{seq}\"\n")),
        },
        Actor::system("verify-test"),
    )
}

async fn long_log() -> PgPool {
    let pool = fresh_pool(8).await;
    let store = EventStore::new(pool.clone());
    for command_idx in 0..EVENTS / PER_COMMAND {
        let stream = StreamId::new(EntityKind::Task, ulid::Ulid::new().to_string());
        let events = (0..PER_COMMAND).map(|event_idx| event(&stream, command_idx * PER_COMMAND + event_idx)).collect();
        store
            .append(NewCommand { events, trace_id: Some(format!("trace-{command_idx}")), ..NewCommand::default() })
            .await
            .unwrap();
    }
    pool
}

async fn verify(pool: &PgPool) -> store::verify::VerifyReport {
    let report = store::verify::verify_chain(pool).await.unwrap();
    assert_eq!(report.ok, report.first_bad_position.is_none(), "{report:?}");
    report
}

/// Applies `damage`, checks that verification names `expected`, then applies `repair` and checks the log verifies
/// again (so the drills can share one log).
async fn drill(pool: &PgPool, damage: &[&str], expected: i64, repair: &[&str]) {
    tamper(pool, damage).await;
    let report = verify(pool).await;
    assert_eq!(report.first_bad_position, Some(expected), "after {damage:?}: {report:?}");
    assert_eq!(report.events_checked, expected, "{report:?}");
    tamper(pool, repair).await;
    let report = verify(pool).await;
    assert!(report.ok, "after repairing {damage:?}: {report:?}");
}

#[tokio::test]
async fn a_long_log_of_awkward_json_verifies_and_every_kind_of_tampering_is_named() {
    let pool = long_log().await;
    let report = verify(&pool).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, EVENTS);
    let head: Vec<u8> =
        sqlx::query_scalar("select hash from audit_log order by position desc limit 1").fetch_one(&pool).await.unwrap();
    assert_eq!(report.head_hash, hex::encode(head));

    sqlx::query("create table saved as select * from audit_log").execute(&pool).await.unwrap();
    let restore_row = |position: i64| {
        format!("delete from audit_log where position = {position}; insert into audit_log select * from saved where position = {position}")
    };

    // An altered payload, inside a stretch, on both sides of a stretch boundary, first and last.
    for position in [12_345, 8_192, 8_193, 1, EVENTS] {
        let restore = restore_row(position);
        drill(
            &pool,
            &[&format!(
                "update audit_log set payload = jsonb_set(payload, '{{b,a}}', '1') where position = {position}"
            )],
            position,
            &restore.split("; ").collect::<Vec<_>>(),
        )
        .await;
    }
    // An altered `after`.
    let restore = restore_row(3_000);
    drill(
        &pool,
        &["update audit_log set after = jsonb_build_object('x', 1) where position = 3000"],
        3_000,
        &restore.split("; ").collect::<Vec<_>>(),
    )
    .await;
    // An altered audit column.
    let restore = restore_row(16_384);
    drill(
        &pool,
        &["update audit_log set actor_id = 'mallory' where position = 16384"],
        16_384,
        &restore.split("; ").collect::<Vec<_>>(),
    )
    .await;
    // A removed row at a stretch boundary.
    drill(
        &pool,
        &["delete from audit_log where position = 8192"],
        8_192,
        &["insert into audit_log select * from saved where position = 8192"],
    )
    .await;
    // A removed row with the rest renumbered to close the gap.
    drill(
        &pool,
        &[
            "delete from audit_log where position = 9000",
            // In two steps, so no intermediate state collides with a position still taken.
            "update audit_log set position = position + 1000000 where position > 9000",
            "update audit_log set position = position - 1000001 where position > 1000000",
        ],
        9_000,
        &["delete from audit_log", "insert into audit_log select * from saved"],
    )
    .await;
    // Two rows swapped across a stretch boundary.
    drill(
        &pool,
        &[
            "update audit_log set position = 1000000 where position = 8192",
            "update audit_log set position = 8192 where position = 8193",
            "update audit_log set position = 8193 where position = 1000000",
        ],
        8_192,
        &["delete from audit_log", "insert into audit_log select * from saved"],
    )
    .await;
}

#[tokio::test]
async fn an_empty_log_verifies() {
    let pool = fresh_pool(8).await;
    let report = verify(&pool).await;
    assert!(report.ok);
    assert_eq!(report.events_checked, 0);
    assert_eq!(report.head_hash, hex::encode([0_u8; 32]));
}

/// Numbers whose text jsonb prints differently from serde_json (no negative zero, no exponents, trailing
/// zeros kept): appended, they verify, and the events the append returned hold what the log reads back.
#[tokio::test]
async fn numbers_jsonb_prints_differently_verify() {
    let pool = fresh_pool(8).await;
    let store = EventStore::new(pool.clone());
    let numbers = r#"[-0.0, -0, 0.0, -0e5, 1e2, 1E+2, 1.0, 1E-7, 2.5e-3, 1.50e1, 1e16, 1.5e18, -9.2e18, 1e20, 1e21,
        18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809,
        123456789012345678901234567890, 5e-324, 1.7976931348623157e308, 0.30000000000000004, -1e-300]"#;
    let numbers: Value = serde_json::from_str(numbers).unwrap();
    let stream = StreamId::new(EntityKind::Task, ulid::Ulid::new().to_string());
    let events = numbers
        .as_array()
        .unwrap()
        .iter()
        .map(|number| {
            NewEvent::new(
                EventData {
                    stream: stream.clone(),
                    event_type: "TestHappened".to_owned(),
                    schema_version: 1,
                    payload: json!({"n": number, "all": numbers, "nested": [{"n": number}]}),
                    before: Some(number.clone()),
                    after: Some(json!({"n": number})),
                    action: Action::Updated,
                    note: None,
                },
                Actor::system("verify-test"),
            )
        })
        .collect();
    let appended = store.append(NewCommand { events, ..NewCommand::default() }).await.unwrap();
    let report = verify(&pool).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, numbers.as_array().unwrap().len() as i64);
    let read_back: Vec<(Value, Option<Value>)> =
        sqlx::query_as("select payload, before from audit_log order by position").fetch_all(&pool).await.unwrap();
    for (event, (payload, before)) in appended.events.iter().zip(&read_back) {
        assert_eq!(event.payload.to_string(), payload.to_string());
        assert_eq!(event.before.as_ref().map(Value::to_string), before.as_ref().map(Value::to_string));
    }
    assert_eq!(read_back[0].1.as_ref().map(Value::to_string).as_deref(), Some("0.0"));
}
