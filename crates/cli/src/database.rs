//! Connecting: to `DATABASE_URL`, or to the managed cluster under the data directory, migrated either way (but for
//! `jct bench`, which only creates and drops scratch databases there).

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use crate::config::DatabaseArgs;

/// A pool (migrated, from [`Database::open`]), and the managed cluster when JCT runs its own.
pub struct Database {
    pub pool: PgPool,
    pub url: String,
    pub cluster: Option<devdb::ManagedCluster>,
}

impl Database {
    /// Connects (starting the managed cluster when `DATABASE_URL` is unset) and applies migrations.
    pub async fn open(args: &DatabaseArgs) -> anyhow::Result<Database> {
        let database = Database::connect(args).await?;
        store::MIGRATOR.run(&database.pool).await.context("apply migrations")?;
        warn_if_autovacuum_is_off(&database.pool).await;
        Ok(database)
    }

    /// Connects (starting the managed cluster when `DATABASE_URL` is unset) without touching the schema: for
    /// creating and dropping other databases through it.
    pub async fn connect(args: &DatabaseArgs) -> anyhow::Result<Database> {
        let (url, cluster) = match &args.database_url {
            Some(url) => (url.clone(), None),
            None => {
                tracing::info!(data_dir = %args.data_dir.display(), "DATABASE_URL is unset; running a managed PostgreSQL");
                std::fs::create_dir_all(&args.data_dir)
                    .with_context(|| format!("create JCT_DATA_DIR {}", args.data_dir.display()))?;
                let data_dir = args.data_dir.canonicalize().context("resolve JCT_DATA_DIR")?;
                let cluster = devdb::ManagedCluster::start(&data_dir).await?;
                (cluster.url(devdb::DEFAULT_DATABASE), Some(cluster))
            }
        };
        let options = store::with_session_settings(url.parse::<PgConnectOptions>().context("parse DATABASE_URL")?);
        let pool = store::pool_options()
            .max_connections(args.pool_size)
            .acquire_timeout(Duration::from_secs(args.acquire_timeout_seconds))
            .connect_with(options)
            .await
            .context("connect to PostgreSQL (DATABASE_URL)")?;
        Ok(Database { pool, url, cluster })
    }

    /// Closes the pool and stops the managed cluster, if any.
    pub async fn close(self) {
        self.pool.close().await;
        if let Some(cluster) = self.cluster {
            cluster.stop().await;
        }
    }
}

/// Says so when the server runs without autovacuum: nothing then vacuums the queue and the read models, whose rows
/// change at every task, nor analyses any table, so they grow and their plans are made from guesses (the reads by
/// key are written to stay fast regardless, ADR 0012; the rest is the operator's to schedule).
async fn warn_if_autovacuum_is_off(pool: &PgPool) {
    match sqlx::query_scalar::<_, String>("select current_setting('autovacuum')").fetch_one(pool).await {
        Ok(setting) if setting == "off" => tracing::warn!(
            "PostgreSQL's autovacuum is off: task_queue, tasks and the cwom tables will bloat and no table is \
             analysed; turn it on, or run `vacuum (analyze)` on this database regularly"
        ),
        Ok(_) => {}
        Err(error) => tracing::debug!("could not read the autovacuum setting: {error}"),
    }
}
