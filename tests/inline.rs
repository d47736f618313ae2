//! Read models applied inside the append transaction: a command's read models commit with its events; a busy or
//! failing read model is left to its projector and no event is lost.

use std::time::Duration;

use domain::task::lifecycle::{self, EnqueueTask};
use domain::task::{evaluate, parse_task_spec};
use serde_json::Value;
use sqlx::PgPool;
use store::NewCommand;

use crate::harness::{status_and_json, tasks_checksum, test_config, valid_task, TestApp};

/// The command `POST /tasks/enqueue` appends for a task without CWOM objects.
fn enqueue_command(task_id: &str) -> NewCommand {
    let spec = parse_task_spec(&valid_task()).expect("a valid spec");
    let spec = evaluate(&spec, &test_config().policy).expect("allowed");
    let events = lifecycle::enqueue(&EnqueueTask {
        spec: &spec,
        task_id,
        trace_id: "trace-inline",
        now: chrono::Utc::now(),
        cwom: None,
    });
    NewCommand { events, trace_id: Some("trace-inline".into()), ..NewCommand::default() }
}

async fn checkpoints(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("select name, position from projection_checkpoints order by name").fetch_all(pool).await.unwrap()
}

async fn tasks_checkpoint(pool: &PgPool) -> i64 {
    checkpoints(pool).await.into_iter().find(|(name, _)| name == "tasks").expect("the tasks checkpoint").1
}

async fn head(pool: &PgPool) -> i64 {
    store::read::head_position(pool).await.unwrap()
}

#[tokio::test]
async fn an_append_commits_every_read_model_with_its_events() {
    let test = TestApp::spawn().await;
    let task_id = ulid::Ulid::new().to_string();
    // Straight through the store: no read-your-writes wait and no projector runs in this test.
    let appended = test.app.store().append(enqueue_command(&task_id)).await.unwrap();
    assert!(appended.read_models_applied, "the caller is told it need not wait");
    let stats = test.app.store().stats();
    assert_eq!((stats.pipelined_batches, stats.stepwise_batches), (1, 0), "appended in the pipeline: {stats:?}");
    let head = head(&test.pool).await;
    assert_eq!(appended.last_position(), head);
    for (name, position) in checkpoints(&test.pool).await {
        assert_eq!(position, head, "{name} was applied with the append");
    }
    let task = projections::tasks::get_task(&test.pool, &task_id).await.unwrap().expect("the task row");
    assert_eq!(task["status"], "queued");

    // Through HTTP with the CWOM objects: every model is current when the 201 arrives.
    let (status, created) = status_and_json(test.enqueue(&valid_task()).await).await;
    assert_eq!(status, 201, "{created}");
    let head = crate::inline::head(&test.pool).await;
    for (name, position) in checkpoints(&test.pool).await {
        assert_eq!(position, head, "{name}");
    }
    let issue_id = created["cwom"]["issue_id"].as_str().expect("an issue id");
    let (status, issue) = status_and_json(test.client.get(format!("/cwom/issues/{issue_id}")).send().await).await;
    assert_eq!(status, 200, "{issue}");
}

#[tokio::test]
async fn a_read_model_busy_with_its_projector_is_left_to_it_and_the_command_still_reads_its_writes() {
    let test = std::sync::Arc::new(TestApp::spawn().await);
    // A projector holds the tasks checkpoint row (as while it applies a batch).
    let mut projector = test.pool.begin().await.unwrap();
    sqlx::query("select position from projection_checkpoints where name = 'tasks' for update")
        .execute(&mut *projector)
        .await
        .unwrap();

    let enqueue = tokio::spawn({
        let test = test.clone();
        async move { status_and_json(test.enqueue(&valid_task()).await).await }
    });
    // The append commits without waiting for the row; the other models are applied inline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while head(&test.pool).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the append waited for the busy read model");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let head = head(&test.pool).await;
    let positions: std::collections::HashMap<String, i64> = checkpoints(&test.pool).await.into_iter().collect();
    assert_eq!(positions["tasks"], 0, "the busy model was not touched");
    assert_eq!(positions["cwom"], head);
    assert_eq!(positions["task_queue"], head);
    assert!(!enqueue.is_finished(), "the 201 waits until the task can be read");

    projector.rollback().await.unwrap();
    let (status, created) = enqueue.await.unwrap();
    assert_eq!(status, 201, "{created}");
    let (status, task) = status_and_json(test.get_task(created["task_id"].as_str().unwrap()).await).await;
    assert_eq!(status, 200, "{task}");
    let positions: std::collections::HashMap<String, i64> = checkpoints(&test.pool).await.into_iter().collect();
    assert_eq!(positions["tasks"], head);

    // The model is behind no longer, so the next append applies it inline again.
    let task_id = ulid::Ulid::new().to_string();
    let appended = test.app.store().append(enqueue_command(&task_id)).await.unwrap();
    assert_eq!(
        checkpoints(&test.pool).await.into_iter().find(|(name, _)| name == "tasks").unwrap().1,
        appended.last_position()
    );
}

#[tokio::test]
async fn a_read_model_that_fails_to_apply_does_not_stop_the_events() {
    let test = TestApp::spawn().await;
    // Every new tasks row now fails to insert.
    sqlx::raw_sql("alter table tasks add constraint refuse_everything check (false) not valid")
        .execute(&test.pool)
        .await
        .unwrap();
    let task_id = ulid::Ulid::new().to_string();
    let appended = test.app.store().append(enqueue_command(&task_id)).await.expect("the events are stored");
    assert!(!appended.read_models_applied, "the caller must wait for the projectors");
    let stored = store::read::read_after(&test.pool, 0, 100).await.unwrap();
    assert_eq!(stored.len(), appended.events.len());
    assert!(projections::tasks::get_task(&test.pool, &task_id).await.unwrap().is_none());
    // The read models were rolled back together and left to their projectors.
    for (name, position) in checkpoints(&test.pool).await {
        assert_eq!(position, 0, "{name}");
    }

    sqlx::raw_sql("alter table tasks drop constraint refuse_everything").execute(&test.pool).await.unwrap();
    for projection in test.app.projections() {
        projections::runner::catch_up(&test.pool, projection.as_ref(), test.app.upcasters()).await.unwrap();
    }
    let task: Value = projections::tasks::get_task(&test.pool, &task_id).await.unwrap().expect("caught up");
    assert_eq!(task["status"], "queued");
}

#[tokio::test]
async fn a_read_model_a_little_behind_is_caught_up_by_the_next_append_and_one_far_behind_is_left_to_its_projector() {
    let test = TestApp::spawn().await;
    // One append while a projector holds the tasks checkpoint: it skips the model, which nobody catches up here.
    let mut projector = test.pool.begin().await.unwrap();
    sqlx::query("select position from projection_checkpoints where name = 'tasks' for update")
        .execute(&mut *projector)
        .await
        .unwrap();
    let skipped = ulid::Ulid::new().to_string();
    let before = test.app.store().stats();
    let appended = test.app.store().append(enqueue_command(&skipped)).await.unwrap();
    assert!(!appended.read_models_applied);
    // The pipeline's first statement refused (the tasks checkpoint was busy), nothing of it committed, and the
    // batch was appended step by step instead, applying the models that were free.
    let after = test.app.store().stats();
    assert_eq!(after.pipelined_batches, before.pipelined_batches, "{after:?}");
    assert_eq!(after.stepwise_batches, before.stepwise_batches + 1, "{after:?}");
    assert_eq!(head(&test.pool).await, appended.last_position(), "the batch committed once");
    projector.rollback().await.unwrap();
    assert_eq!(tasks_checkpoint(&test.pool).await, 0);

    // The next append folds the positions the model missed, then its own (step by step: only that path catches a
    // model up), and the one after it goes through the pipeline again.
    let next = ulid::Ulid::new().to_string();
    let appended = test.app.store().append(enqueue_command(&next)).await.unwrap();
    assert!(appended.read_models_applied, "every model applied inline again");
    assert_eq!(tasks_checkpoint(&test.pool).await, appended.last_position());
    assert_eq!(test.app.store().stats().stepwise_batches, before.stepwise_batches + 2);
    let third = ulid::Ulid::new().to_string();
    let appended = test.app.store().append(enqueue_command(&third)).await.unwrap();
    assert!(appended.read_models_applied);
    assert_eq!(test.app.store().stats().pipelined_batches, before.pipelined_batches + 1);
    assert_eq!(tasks_checkpoint(&test.pool).await, appended.last_position());
    for task_id in [&skipped, &next, &third] {
        let task = projections::tasks::get_task(&test.pool, task_id).await.unwrap().expect("the task row");
        assert_eq!(task["status"], "queued");
    }

    // Far behind (over 512 positions): not read under the append lock; its projector catches it up.
    let mut projector = test.pool.begin().await.unwrap();
    sqlx::query("select position from projection_checkpoints where name = 'tasks' for update")
        .execute(&mut *projector)
        .await
        .unwrap();
    let before = tasks_checkpoint(&test.pool).await;
    let many: Vec<String> = (0..300).map(|_| ulid::Ulid::new().to_string()).collect();
    let appends = many.iter().map(|task_id| test.app.store().append(enqueue_command(task_id)));
    for appended in futures::future::join_all(appends).await {
        assert!(!appended.unwrap().read_models_applied);
    }
    projector.rollback().await.unwrap();
    let appended = test.app.store().append(enqueue_command(&ulid::Ulid::new().to_string())).await.unwrap();
    assert!(!appended.read_models_applied);
    assert_eq!(tasks_checkpoint(&test.pool).await, before);
    let tasks = test.app.projections().iter().find(|projection| projection.name() == "tasks").unwrap().clone();
    projections::runner::catch_up(&test.pool, tasks.as_ref(), test.app.upcasters()).await.unwrap();
    assert_eq!(tasks_checkpoint(&test.pool).await, appended.last_position());
    assert!(projections::tasks::get_task(&test.pool, &many[299]).await.unwrap().is_some());
}

/// The generic plan of `statement` on `conn`, as the appender's pipeline runs it (under `GENERIC_PLAN_ON`, in a
/// transaction), one line per plan node.
async fn generic_plan(pool: &PgPool, statement: &store::sql::Statement<'_>) -> String {
    // A generic plan does not depend on the values: nulls stand for every parameter.
    let nulls = vec!["null"; statement.params.len()].join(", ");
    devdb::prepared_plan(pool, store::sql::GENERIC_PLAN_ON, statement.sql, &nulls).await.unwrap()
}

#[tokio::test]
async fn the_read_models_generic_statements_find_their_rows_by_index_on_a_table_never_analysed_and_after() {
    let test = TestApp::spawn().await;
    let (status, task) = status_and_json(test.enqueue(&valid_task()).await).await;
    assert_eq!(status, 201, "{task}");
    let task_id = task["task_id"].as_str().unwrap().to_owned();
    let (status, cancelled) = status_and_json(test.client.post(format!("/tasks/{task_id}/cancel")).send().await).await;
    assert_eq!(status, 200, "{cancelled}");

    // The cancel's batch: a status change to `tasks` and a row leaving `task_queue`, as the appender sends them.
    let events: Vec<_> =
        test.events().await.into_iter().filter(|event| event.event_type == lifecycle::events::TASK_CANCELLED).collect();
    assert_eq!(events.len(), 1);
    let mut generic = Vec::new();
    for projection in test.app.projections() {
        for statement in projection.batch_statements(&events).unwrap().unwrap_or_default() {
            if statement.planning == store::sql::Planning::Generic {
                generic.push(statement);
            }
        }
    }
    let mut names: Vec<&str> = generic.iter().map(|statement| statement.what).collect();
    names.sort_unstable();
    assert_eq!(names, ["update tasks", "write queue rows"]);

    // The test's database is seconds old: autovacuum has not analysed its tables, the case in which PostgreSQL's
    // own generic plans scanned them. Then with statistics of a few thousand rows.
    for analysed in [false, true] {
        if analysed {
            sqlx::query(
                "insert into task_queue (task_id, state, due_at, attempt, worker_id, version) \
                 select 'filler-' || n, 'queued', now(), 0, null, 1 from generate_series(1, 5000) as n",
            )
            .execute(&test.pool)
            .await
            .unwrap();
            sqlx::query("analyze tasks, task_queue").execute(&test.pool).await.unwrap();
        }
        for statement in &generic {
            let plan = generic_plan(&test.pool, statement).await;
            assert!(!plan.contains("Seq Scan"), "{} (analysed: {analysed}):\n{plan}", statement.what);
            assert!(plan.contains("_pkey"), "{} (analysed: {analysed}):\n{plan}", statement.what);
        }
    }
}

#[tokio::test]
async fn a_projector_killed_mid_batch_resumes_from_its_checkpoint_and_applies_nothing_twice() {
    let test = TestApp::spawn().await;
    let first = ulid::Ulid::new().to_string();
    test.app.store().append(enqueue_command(&first)).await.unwrap();
    let applied = tasks_checkpoint(&test.pool).await;

    // The tasks model falls behind (its projector holds the checkpoint row, so appends leave the model to it) by
    // forty new tasks and then the cancel of the first one.
    let mut busy = test.pool.begin().await.unwrap();
    sqlx::query("select 1 from projection_checkpoints where name = 'tasks' for update")
        .execute(&mut *busy)
        .await
        .unwrap();
    let later: Vec<String> = (0..40).map(|_| ulid::Ulid::new().to_string()).collect();
    for task_id in &later {
        test.app.store().append(enqueue_command(task_id)).await.unwrap();
    }
    let mut state = app::worker::load_state(&test.app, &first).await.unwrap();
    let actor = domain::event::Actor::system("test");
    let cancel = domain::task::run::Cancel { now: chrono::Utc::now(), actor: &actor, reason: None };
    app::worker::append_decision(&test.app, &mut state, None, |state| domain::task::run::decide_cancel(state, &cancel))
        .await
        .unwrap()
        .expect("a queued task can be cancelled");
    busy.rollback().await.unwrap();
    assert_eq!(tasks_checkpoint(&test.pool).await, applied, "the tasks model is behind");

    // Its projector applies the batch: it inserts the forty rows, then waits for the first task's row, which this
    // test holds. Mid-batch, its backend is killed, as when its process dies.
    let mut holder = test.pool.begin().await.unwrap();
    let holder_pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&mut *holder).await.unwrap();
    sqlx::query("select 1 from tasks where task_id = $1 for update").bind(&first).execute(&mut *holder).await.unwrap();
    let projector = tokio::spawn({
        let pool = test.pool.clone();
        async move {
            projections::runner::apply_batch(&pool, &projections::tasks::TasksProjection, &app::upcasters(), 1000).await
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let blocked: i32 = loop {
        let waiting: Option<i32> =
            sqlx::query_scalar("select pid from pg_stat_activity where $1 = any(pg_blocking_pids(pid))")
                .bind(holder_pid)
                .fetch_optional(&test.pool)
                .await
                .unwrap();
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "the projector never reached the held row");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let terminated: bool =
        sqlx::query_scalar("select pg_terminate_backend($1)").bind(blocked).fetch_one(&test.pool).await.unwrap();
    assert!(terminated);
    assert!(projector.await.unwrap().is_err(), "the killed batch failed");
    holder.rollback().await.unwrap();

    // Nothing of the killed batch is visible, rows or checkpoint.
    assert_eq!(tasks_checkpoint(&test.pool).await, applied);
    let rows: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&test.pool).await.unwrap();
    assert_eq!(rows, 1);

    // The projector starts again from its checkpoint: every event applied once, as a rebuild from the log has it.
    projections::runner::catch_up(&test.pool, &projections::tasks::TasksProjection, &app::upcasters()).await.unwrap();
    assert_eq!(tasks_checkpoint(&test.pool).await, head(&test.pool).await);
    let first_task: Value = projections::tasks::get_task(&test.pool, &first).await.unwrap().expect("the first task");
    assert_eq!(first_task["status"], "cancelled");
    let resumed = tasks_checksum(&test.pool).await;
    projections::rebuild::rebuild(&test.pool, &projections::tasks::TasksProjection, &app::upcasters(), &|_| {})
        .await
        .unwrap();
    assert_eq!(tasks_checksum(&test.pool).await, resumed);
    let rows: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&test.pool).await.unwrap();
    assert_eq!(rows, 41);
}
