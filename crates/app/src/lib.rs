//! JCT's use cases: load what a decision needs, decide (pure, in `domain`), append, and wait for the read
//! models so the caller reads its own writes. The HTTP API and the worker call these functions and nothing
//! below them.
//!
//! Architecture invariant: no HTTP types here, and no SQL other than through `store` and `projections`.

pub mod audit;
pub mod cwom;
pub mod system;
pub mod tasks;
pub mod worker;

pub use projections::tasks::TaskFilter;

use std::sync::Arc;
use std::time::Duration;

use domain::task::PolicyConfig;
use projections::Projection;
use sqlx::PgPool;
use store::{EventStore, Upcasters};

/// Settings the use cases need.
#[derive(Debug, Clone)]
pub struct Config {
    /// The policy gate's allow-list and budget bounds.
    pub policy: PolicyConfig,
    /// How long a command waits for the read models to show its effect before answering 2xx anyway.
    pub read_your_writes_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config { policy: PolicyConfig::default(), read_your_writes_timeout: Duration::from_secs(10) }
    }
}

/// Every read model, in the order they are installed and caught up.
pub fn all_projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(projections::tasks::TasksProjection),
        Arc::new(projections::cwom::CwomProjection),
        Arc::new(projections::queue::QueueProjection),
    ]
}

/// Whether `error` (a use case's failure) means the database is unavailable for now (restarting, unreachable, or
/// no connection free in time) rather than that the request failed: the API answers 503 with `Retry-After`.
pub fn database_unavailable(error: &anyhow::Error) -> bool {
    store::is_unavailable(error)
}

/// Every registered upcaster (none yet: every event type is at its first schema version).
pub fn upcasters() -> Upcasters {
    Upcasters::new()
}

/// The application: a pool, the event store, settings. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    store: EventStore,
    config: Config,
    upcasters: Upcasters,
    projections: Vec<Arc<dyn Projection>>,
    /// What `/metrics` has counted so far (`system::database_metrics`): the worker's events, and the events that
    /// end a task.
    worker_event_counts: tokio::sync::Mutex<system::EventCounts>,
    finished_task_counts: tokio::sync::Mutex<system::EventCounts>,
}

impl App {
    /// Builds the application on a migrated database and installs (or rebuilds) the read models.
    pub async fn start(pool: PgPool, config: Config) -> anyhow::Result<App> {
        App::start_with(pool, config, all_projections()).await
    }

    /// Like [`App::start`] with a chosen set of read models (a deployment that changes one's version, say).
    pub async fn start_with(
        pool: PgPool,
        config: Config,
        projections: Vec<Arc<dyn Projection>>,
    ) -> anyhow::Result<App> {
        let upcasters = upcasters();
        for projection in &projections {
            projections::runner::install(&pool, projection.as_ref(), &upcasters).await?;
        }
        let inline = Arc::new(projections::inline::InlineProjections::new(&projections, upcasters.clone()));
        let store = EventStore::with_inline_projector(pool.clone(), inline);
        Ok(App {
            inner: Arc::new(Inner {
                store,
                pool,
                config,
                upcasters,
                projections,
                worker_event_counts: tokio::sync::Mutex::default(),
                finished_task_counts: tokio::sync::Mutex::default(),
            }),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn upcasters(&self) -> &Upcasters {
        &self.inner.upcasters
    }

    pub fn projections(&self) -> &[Arc<dyn Projection>] {
        &self.inner.projections
    }

    /// Read-your-writes: returns once every read model has applied `position`.
    pub async fn wait_for(&self, position: i64) -> anyhow::Result<()> {
        projections::runner::wait_for(
            self.pool(),
            self.projections(),
            self.upcasters(),
            position,
            self.config().read_your_writes_timeout,
        )
        .await
    }

    /// Read-your-writes for an append: at once when the store applied every read model in its transaction,
    /// else [`App::wait_for`] its last position.
    pub async fn wait_for_appended(&self, appended: &store::Appended) -> anyhow::Result<()> {
        if appended.read_models_applied {
            return Ok(());
        }
        self.wait_for(appended.last_position()).await
    }

    /// Whether the database answers.
    pub async fn database_is_up(&self) -> bool {
        sqlx::query("select 1").execute(self.pool()).await.is_ok()
    }
}
