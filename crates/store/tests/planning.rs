//! How the appender's pipeline plans the read models' statements: the `Generic` ones run last, with PostgreSQL's
//! generic plan and sequential scans off, and only they; the others run first, with the session's settings.

use std::sync::Arc;

use sqlx::PgConnection;
use store::sql::{Param, Statement};
use store::{EventStore, InlineProjector, RecordedEvent};

use crate::support::{command, fresh_pool};

/// Read models that only record the planner settings each of their statements ran with.
struct RecordsSettings;

const RECORD: &str = "insert into settings_seen (n, plan_cache_mode, enable_seqscan) \
                      values ($1, current_setting('plan_cache_mode'), current_setting('enable_seqscan'))";

#[async_trait::async_trait]
impl InlineProjector for RecordsSettings {
    fn pipelined_statements<'e>(&self, _events: &'e [RecordedEvent]) -> anyhow::Result<Option<Vec<Statement<'e>>>> {
        Ok(Some(vec![
            Statement::prepared("record before", RECORD, vec![Param::Int8(1)]),
            Statement::generic("record generic", RECORD, vec![Param::Int8(2)]),
            Statement::planned_each_time("record after", RECORD, vec![Param::Int8(3)]),
        ]))
    }

    async fn apply_appended(&self, _conn: &mut PgConnection, _events: &[RecordedEvent]) -> anyhow::Result<bool> {
        anyhow::bail!("this test expects every batch to go through the pipeline")
    }
}

#[tokio::test]
async fn only_a_generic_statement_runs_with_the_generic_plan_and_no_sequential_scans_after_the_others() {
    let pool = fresh_pool(4).await;
    sqlx::query("create table settings_seen (seq bigserial, n bigint, plan_cache_mode text, enable_seqscan text)")
        .execute(&pool)
        .await
        .unwrap();
    let store = EventStore::with_inline_projector(pool.clone(), Arc::new(RecordsSettings));
    let appended = store.append(command(1)).await.unwrap();
    assert!(appended.read_models_applied);
    assert_eq!(store.stats().pipelined_batches, 1);

    let seen: Vec<(i64, String, String)> =
        sqlx::query_as("select n, plan_cache_mode, enable_seqscan from settings_seen order by seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    // In the order they ran: the `Generic` statement last, behind the one given after it.
    let expected = [(1, "auto", "on"), (3, "auto", "on"), (2, "force_generic_plan", "off")];
    let expected: Vec<(i64, String, String)> =
        expected.iter().map(|(n, mode, seqscan)| (*n, mode.to_string(), seqscan.to_string())).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn streams_are_read_by_their_key_even_when_planned_on_an_empty_log_never_analysed() {
    let pool = fresh_pool(2).await;
    // The log is empty (guessed at ten pages) and has never been analysed: without its fence the lateral lookup was
    // pulled up into a hash join over a sequential scan of the whole log.
    let plan =
        devdb::generic_plan(&pool, &store::read::read_streams_sql(), "'{Task,Issue}', '{a,b}', '{3,2147483647}'")
            .await
            .unwrap();
    assert!(!plan.contains("Seq Scan on audit_log"), "{plan}");
    assert!(
        plan.contains(
            "Index Cond: ((entity_kind = u.kind) AND (entity_id = u.id) AND (stream_version < (max(u.before))))"
        ),
        "{plan}"
    );
}
