//! `TestApp`: the whole HTTP application in-process on a fresh database, with one method per endpoint.

use std::time::Duration;

use app::{App, Config};
use domain::task::PolicyConfig;
use poem::endpoint::BoxEndpoint;
use poem::test::{TestClient, TestResponse};
use poem::EndpointExt as _;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The allow-list every test runs with unless it says otherwise, as in the original's test suite.
pub const TEST_PREFIXES: &str = "testorg/";

#[allow(dead_code, reason = "used by some test modules and not others")]
pub struct TestApp {
    pub client: TestClient<BoxEndpoint<'static>>,
    pub app: App,
    pub pool: PgPool,
    pub database_url: String,
}

/// Sends the service's warnings and errors (or what `RUST_LOG` asks for) to the test's captured output, so a
/// failing test shows what the server logged.
fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// A pool on a new, migrated database of its own.
pub async fn fresh_database() -> (PgPool, String) {
    let url = devdb::test_server().await.expect("test server").fresh_database().await.expect("fresh database");
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .expect("connect");
    store::MIGRATOR.run(&pool).await.expect("migrate");
    (pool, url)
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(test_config(), api::HttpConfig::default()).await
    }

    pub async fn spawn_with(config: Config, http: api::HttpConfig) -> TestApp {
        capture_logs();
        let (pool, database_url) = fresh_database().await;
        let app = App::start(pool.clone(), config).await.expect("start app");
        let client = TestClient::new(api::endpoint(app.clone(), http).boxed());
        TestApp { client, app, pool, database_url }
    }

    pub async fn enqueue(&self, body: &Value) -> TestResponse {
        self.client.post("/tasks/enqueue").body_json(body).send().await
    }

    pub async fn get_task(&self, task_id: &str) -> TestResponse {
        self.client.get(format!("/tasks/{task_id}")).send().await
    }

    pub async fn events(&self) -> Vec<store::RecordedEvent> {
        store::read::read_after(&self.pool, 0, 1_000_000).await.expect("read events")
    }
}

pub fn test_config() -> Config {
    Config { policy: PolicyConfig::from_prefixes(TEST_PREFIXES), ..Config::default() }
}

/// A valid TaskSpec v1 body (the original's `valid_task_payload` fixture).
pub fn valid_task() -> Value {
    serde_json::json!({
        "version": "1.0",
        "requested_by": {"kind": "human", "id": "test-user", "label": "Test User"},
        "objective": "Add a /healthz endpoint with a test",
        "operation": "code_change",
        "target": {"repo": "testorg/test-repo", "ref": "main", "path": ""},
        "constraints": {"time_budget_seconds": 300, "allow_network": false, "allow_secrets": false},
        "inputs": {},
        "metadata": {}
    })
}

/// The status and JSON body of a response.
pub async fn status_and_json(response: TestResponse) -> (u16, Value) {
    let status = response.0.status().as_u16();
    let body = response.0.into_body().into_bytes().await.expect("body");
    let json = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("a JSON body") };
    (status, json)
}

/// A checksum of the whole `tasks` read model, row by row in key order: equal models give equal checksums.
pub async fn tasks_checksum(pool: &PgPool) -> String {
    sqlx::query_scalar("select md5(coalesce(string_agg(t::text, '|' order by task_id), '')) from tasks t")
        .fetch_one(pool)
        .await
        .unwrap()
}
