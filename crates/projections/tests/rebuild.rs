//! Rebuilds of the task read models, which read only task events (`Projection::entity_kinds`), over a log of
//! several stretches with every kind of event interleaved, while commands keep arriving: the result equals the
//! read models folded event by event, and the checkpoint moves to the end of the whole log.
//!
//! Runs on a fresh database of its own from `devdb` (the server at `DATABASE_URL`, or a throwaway cluster).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta};
use domain::event::{Action, Actor, EntityKind, EventData, NewEvent, StreamId};
use domain::task::lifecycle::{self, EnqueueTask};
use domain::task::run::{
    FailureReason, TaskCancelled, TaskClaimed, TaskCompleted, TaskFailed, TaskLeaseRenewed, TaskReleased,
    TaskRetryScheduled,
};
use domain::task::{evaluate, parse_task_spec, task_to_cwom, CwomIds, PolicyConfig};
use projections::queue::QueueProjection;
use projections::rebuild::Progress;
use projections::tasks::TasksProjection;
use projections::Projection;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use store::{EventStore, NewCommand, Upcasters};

extern crate jct_projections as projections;

/// Tasks seeded: with their CWOM objects and runs, about 16,000 events, several rebuild stretches.
const TASKS: u64 = 1_500;

/// A pool on a new, migrated database of its own.
async fn fresh_database() -> PgPool {
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let pool = PgPoolOptions::new().max_connections(12).connect(&url).await.expect("connect");
    store::MIGRATOR.run(&pool).await.expect("migrate");
    pool
}

/// The commands of one seeded task: its enqueue (task and CWOM events), then a run history chosen by `seq`.
fn task_commands(seq: u64) -> Vec<NewCommand> {
    let operation = ["code_change", "docs", "analysis", "ops"][(seq % 4) as usize];
    let body = json!({
        "requested_by": {"kind": "agent", "id": format!("seeder-{}", seq % 7)},
        "objective": format!("Seeded task {seq}"),
        "operation": operation,
        "target": {"repo": format!("bench/repo-{seq}"), "ref": "main", "path": "src"},
        "inputs": {"seq": seq},
    });
    let spec = parse_task_spec(&body).expect("a valid spec");
    let spec = evaluate(&spec, &PolicyConfig::from_prefixes("bench/")).expect("an allowed spec");
    let now = DateTime::from_timestamp(1_800_000_000 + seq as i64, 0).unwrap();
    let trace_id = format!("trace-{seq}");
    let task_id = ulid::Ulid::new().to_string();
    let ids = CwomIds {
        repo_id: ulid::Ulid::new().to_string(),
        constraint_snapshot_id: ulid::Ulid::new().to_string(),
        issue_id: ulid::Ulid::new().to_string(),
        context_packet_id: ulid::Ulid::new().to_string(),
    };
    let cwom = task_to_cwom(&spec, &trace_id, now, ids, None);
    let enqueue = lifecycle::enqueue(&EnqueueTask {
        spec: &spec,
        task_id: &task_id,
        trace_id: &trace_id,
        now,
        cwom: Some(&cwom),
    });
    let mut commands = vec![NewCommand { events: enqueue, trace_id: Some(trace_id.clone()), ..NewCommand::default() }];
    let at = |seconds: i64| now + TimeDelta::seconds(seconds);
    let event = |event_type: &str, payload: serde_json::Value| {
        NewEvent::new(
            EventData {
                stream: StreamId::new(EntityKind::Task, task_id.clone()),
                event_type: event_type.to_owned(),
                schema_version: 1,
                payload,
                action: Action::StatusChanged,
                before: None,
                after: None,
                note: None,
            },
            Actor::system("worker-test"),
        )
    };
    let claimed = |attempt: u32, seconds: i64| {
        event(
            "TaskClaimed",
            serde_json::to_value(TaskClaimed {
                task_id: task_id.clone(),
                attempt,
                worker_id: format!("worker-{}", seq % 3),
                run_id: ulid::Ulid::new().to_string(),
                cwom_issue_id: None,
                claimed_at: at(seconds),
                lease_expires_at: at(seconds + 30),
                trace_path: Some(format!("file:///traces/{task_id}")),
            })
            .unwrap(),
        )
    };
    let worker_id = format!("worker-{}", seq % 3);
    let mut run = vec![claimed(1, 1)];
    if seq % 5 != 0 {
        run.push(event(
            "TaskLeaseRenewed",
            serde_json::to_value(TaskLeaseRenewed {
                task_id: task_id.clone(),
                attempt: 1,
                worker_id: worker_id.clone(),
                renewed_at: at(10),
                lease_expires_at: at(40),
            })
            .unwrap(),
        ));
    }
    let ending = match seq % 6 {
        0 => None,
        1 => Some(event(
            "TaskCompleted",
            serde_json::to_value(TaskCompleted {
                task_id: task_id.clone(),
                attempt: 1,
                worker_id: worker_id.clone(),
                completed_at: at(20),
                duration_s: 19.0,
                outputs: json!({"ok": seq}),
                log_digest: None,
            })
            .unwrap(),
        )),
        2 => Some(event(
            "TaskFailed",
            serde_json::to_value(TaskFailed {
                task_id: task_id.clone(),
                attempt: 1,
                worker_id: worker_id.clone(),
                reason: FailureReason::Failed,
                error: format!("boom {seq}"),
                failed_at: at(20),
                failures: 1,
                duration_s: Some(19.0),
                log_digest: None,
            })
            .unwrap(),
        )),
        3 => Some(event(
            "TaskReleased",
            serde_json::to_value(TaskReleased {
                task_id: task_id.clone(),
                attempt: 1,
                worker_id: worker_id.clone(),
                released_at: at(20),
                reason: "shutdown".into(),
                duration_s: 19.0,
                log_digest: None,
            })
            .unwrap(),
        )),
        4 => Some(event(
            "TaskCancelled",
            serde_json::to_value(TaskCancelled {
                task_id: task_id.clone(),
                attempt: Some(1),
                cancelled_at: at(20),
                reason: None,
            })
            .unwrap(),
        )),
        _ => Some(event(
            "TaskRetryScheduled",
            serde_json::to_value(TaskRetryScheduled {
                task_id: task_id.clone(),
                attempt: 1,
                worker_id: worker_id.clone(),
                reason: FailureReason::TimedOut,
                error: "timed out".into(),
                failed_at: at(20),
                failures: 1,
                retry_at: at(50),
                next_attempt: 2,
                duration_s: None,
                log_digest: None,
            })
            .unwrap(),
        )),
    };
    run.extend(ending);
    if seq % 6 == 5 && seq % 4 == 1 {
        run.push(claimed(2, 60));
    }
    commands.extend(run.into_iter().map(|event| NewCommand {
        events: vec![event],
        trace_id: Some(trace_id.clone()),
        ..NewCommand::default()
    }));
    commands
}

/// Appends the commands of tasks `seqs`, with the tasks' commands interleaved in the log.
async fn seed(store: &EventStore, seqs: std::ops::Range<u64>) {
    let tasks: Vec<Vec<NewCommand>> = seqs.map(task_commands).collect();
    let mut rounds: Vec<Vec<NewCommand>> = Vec::new();
    for commands in tasks {
        for (round, command) in commands.into_iter().enumerate() {
            if rounds.len() <= round {
                rounds.push(Vec::new());
            }
            rounds[round].push(command);
        }
    }
    for round in rounds {
        // Concurrent appenders: the store batches them; the order within a round does not matter.
        let appends = round.into_iter().map(|command| {
            let store = store.clone();
            async move { store.append(command).await.expect("append") }
        });
        futures::future::join_all(appends).await;
    }
}

async fn checksum(pool: &PgPool, table: &str) -> (i64, String) {
    sqlx::query_as(&format!(
        "select count(*), md5(coalesce(string_agg(t::text, '|' order by t::text), '')) from {table} t"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    upcasters: &Upcasters,
) -> (projections::rebuild::Rebuilt, Vec<Progress>) {
    let reports = Mutex::new(Vec::new());
    let rebuilt =
        projections::rebuild::rebuild(pool, projection, upcasters, &|progress| reports.lock().unwrap().push(progress))
            .await
            .unwrap();
    (rebuilt, reports.into_inner().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_read_models_rebuilt_from_task_events_only_equal_the_event_by_event_fold() {
    let pool = fresh_database().await;
    let store = EventStore::new(pool.clone());
    let upcasters = Upcasters::new();
    let models: [(Arc<dyn Projection>, &str); 2] =
        [(Arc::new(TasksProjection), "tasks"), (Arc::new(QueueProjection), "task_queue")];
    for (projection, _) in &models {
        assert_eq!(projection.entity_kinds(), Some(&[EntityKind::Task][..]));
    }

    seed(&store, 0..TASKS).await;
    let head = store::read::head_position(&pool).await.unwrap();
    let task_events: i64 =
        sqlx::query_scalar("select count(*) from audit_log where entity_kind = 'Task'").fetch_one(&pool).await.unwrap();
    assert!(head > 15_000 && task_events < head / 2, "a log of {head} events, {task_events} of tasks");

    // Folded event by event, every event passed (as the projectors and inline application do).
    for (projection, _) in &models {
        projections::runner::install(&pool, projection.as_ref(), &upcasters).await.unwrap();
        projections::runner::catch_up(&pool, projection.as_ref(), &upcasters).await.unwrap();
    }
    let mut folded = Vec::new();
    for (_, table) in &models {
        folded.push(checksum(&pool, table).await);
    }
    assert!(folded[0].0 == TASKS as i64 && folded[1].0 > 0, "{folded:?}");

    for ((projection, table), expected) in models.iter().zip(&folded) {
        let (rebuilt, progress) = rebuild(&pool, projection.as_ref(), &upcasters).await;
        assert_eq!(&checksum(&pool, table).await, expected, "{table} rebuilt from task events only");
        assert_eq!((rebuilt.position, rebuilt.applied, rebuilt.read), (head, head as u64, task_events as u64));
        assert!(progress.len() > 2, "progress is reported per stretch: {progress:?}");
        assert!(progress
            .windows(2)
            .all(|pair| pair[0].position <= pair[1].position && pair[0].applied <= pair[1].applied));
        assert_eq!(progress.last().map(|last| (last.position, last.applied)), Some((head, head as u64)));
        assert_eq!(projections::runner::checkpoint(&pool, projection.name()).await.unwrap(), head);
    }

    // Again while commands keep arriving: the swap folds what came meanwhile, the projector the rest.
    let appender = {
        let store = store.clone();
        tokio::spawn(async move { seed(&store, TASKS..TASKS + 300).await })
    };
    for (projection, _) in &models {
        rebuild(&pool, projection.as_ref(), &upcasters).await;
    }
    appender.await.unwrap();
    let head = store::read::head_position(&pool).await.unwrap();
    for (projection, _) in &models {
        projections::runner::catch_up(&pool, projection.as_ref(), &upcasters).await.unwrap();
        assert_eq!(projections::runner::checkpoint(&pool, projection.name()).await.unwrap(), head);
    }
    // The reference: every event folded from scratch into a schema of its own.
    let all: Vec<Arc<dyn Projection>> = models.iter().map(|(projection, _)| projection.clone()).collect();
    projections::rebuild::replay_into(&pool, &all, &upcasters, "reference", head, &|_| {}).await.unwrap();
    for (_, table) in &models {
        assert_eq!(
            checksum(&pool, table).await,
            checksum(&pool, &format!("reference.{table}")).await,
            "{table} after a rebuild under load and catching up"
        );
    }
}
