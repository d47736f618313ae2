//! The schema-change drill: a new version of the `tasks` read model (one more column, derived from existing
//! events) is rebuilt beside the live one while requests keep coming, swapped in, and equals a fold from
//! scratch; no request fails. The runbook is docs/runbooks/schema-change.md.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use projections::tasks::TasksProjection;
use projections::Projection;
use serde_json::json;
use sqlx::PgConnection;
use store::RecordedEvent;

use crate::harness::{status_and_json, tasks_checksum, test_config, valid_task, TestApp};

/// Version 2 of `tasks`: adds `n_events`, the number of the task's own events folded into its row.
struct TasksWithEventCount;

#[async_trait]
impl Projection for TasksWithEventCount {
    fn name(&self) -> &'static str {
        TasksProjection::NAME
    }

    fn version(&self) -> i32 {
        TasksProjection::VERSION + 1
    }

    fn schema(&self) -> &'static str {
        concat!(
            include_str!("../projections/tasks/schema.sql"),
            "\nalter table tasks add column n_events integer not null default 0;\n"
        )
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> anyhow::Result<()> {
        TasksProjection.apply(conn, event).await?;
        if event.stream.kind == domain::event::EntityKind::Task {
            sqlx::query("update tasks set n_events = n_events + 1 where task_id = $1")
                .bind(&event.stream.id)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_read_model_version_is_rebuilt_beside_the_live_one_and_swapped_without_failed_requests() {
    let live = Arc::new(TestApp::spawn().await);
    for n in 0..30 {
        let mut body = valid_task();
        body["objective"] = json!(format!("Existing task number {n}"));
        assert_eq!(status_and_json(live.enqueue(&body).await).await.0, 201);
    }

    // Requests keep coming through the old deployment for the whole drill.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let live = live.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) || served < 40 {
                let mut body = valid_task();
                body["objective"] = json!(format!("Task during the drill {served}"));
                let (status, created) = status_and_json(live.enqueue(&body).await).await;
                if status != 201 {
                    failures.push(format!("enqueue {status}: {created}"));
                    continue;
                }
                let (status, fetched) =
                    status_and_json(live.get_task(created["task_id"].as_str().unwrap()).await).await;
                if status != 200 || fetched["status"] != "queued" {
                    failures.push(format!("get {status}: {fetched}"));
                }
                served += 1;
            }
            (served, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The new deployment: its start finds the live version older than its code and rebuilds beside it.
    let new_pool = sqlx::postgres::PgPoolOptions::new().max_connections(10).connect(&live.database_url).await.unwrap();
    let mut new_projections: Vec<Arc<dyn Projection>> =
        app::all_projections().into_iter().filter(|projection| projection.name() != TasksProjection::NAME).collect();
    new_projections.push(Arc::new(TasksWithEventCount));
    let new_app = app::App::start_with(new_pool.clone(), test_config(), new_projections.clone()).await.unwrap();
    let (stop_projector, projector_stopped) = tokio::sync::oneshot::channel::<()>();
    let projector = tokio::spawn(projections::runner::run(
        new_pool.clone(),
        new_projections,
        app::upcasters(),
        Duration::from_millis(200),
        async move {
            let _ = projector_stopped.await;
        },
    ));
    let live_version: i32 = sqlx::query_scalar("select version from projection_checkpoints where name = 'tasks'")
        .fetch_one(&new_pool)
        .await
        .unwrap();
    assert_eq!(live_version, TasksProjection::VERSION + 1, "swapped in");

    // Let the old deployment serve a while on the new table, then stop the traffic.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (served, failures) = traffic.await.unwrap();
    assert!(failures.is_empty(), "{} failed requests: {failures:?}", failures.len());
    assert!(served >= 40);

    new_app.wait_for(store::read::head_position(&new_pool).await.unwrap()).await.unwrap();
    let n_tasks: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&new_pool).await.unwrap();
    assert_eq!(n_tasks, 30 + served as i64);
    let wrong_counts: i64 =
        sqlx::query_scalar("select count(*) from tasks where n_events <> 2").fetch_one(&new_pool).await.unwrap();
    assert_eq!(wrong_counts, 0, "every task row folded its two events");

    // The incrementally maintained result equals a fold from scratch.
    let _ = stop_projector.send(());
    projector.await.unwrap();
    let maintained = tasks_checksum(&new_pool).await;
    projections::rebuild::rebuild(&new_pool, &TasksWithEventCount, &app::upcasters(), &|_| {}).await.unwrap();
    assert_eq!(tasks_checksum(&new_pool).await, maintained);
}
