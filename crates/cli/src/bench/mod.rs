//! `jct bench`: measurements that print figures, each beside PostgreSQL's own single-row insert rate measured
//! in the same run on the same machine, so every figure reads as a ratio. Nothing here passes or fails on time.
//!
//! Every benchmark runs in a scratch database of its own (`jct_bench_<ulid>`), dropped afterwards. `bench forensics
//! --keep-database` keeps it, as `jct_kept_<ulid>`, to measure again on it; `bench worker --keep-database`, to look
//! at the log its phases left.

mod append;
mod enqueue;
mod forensics;
mod raw;
mod service;

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use hdrhistogram::Histogram;
use sqlx::PgPool;

use crate::config::DatabaseArgs;
use crate::database::Database;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Appends per second and p50/p99 latency at concurrency 1 and 16, for one- and seven-event commands.
    Append {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// A large log made through the append path, then: catch-up, audit queries by trace id, full rebuilds of
    /// every projection, and hash-chain verification.
    Forensics {
        /// About how many events to append.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// How many audit queries by trace id to time.
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
        /// Keep the scratch database afterwards (its name is printed), to measure again with `--reuse-database`.
        #[arg(long)]
        keep_database: bool,
        /// Measure on a database an earlier `--keep-database` run left, instead of seeding a new one. Its read
        /// models are dropped and caught up from the start again; the database is kept.
        #[arg(long)]
        reuse_database: Option<String>,
    },
    /// The worker: wake latency (commit of TaskEnqueued → RunStarted) idle and under a steady enqueue rate,
    /// end-to-end tasks/s with the stub handler and trace folders, and the worker's own overhead per task.
    Worker {
        /// Wake-latency samples with an idle worker.
        #[arg(long, default_value_t = 200)]
        idle_samples: usize,
        /// The steady enqueue rate of the loaded wake-latency measurement, tasks per second.
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
        /// Seconds the loaded measurement enqueues.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Tasks in the backlog of the end-to-end measurement.
        #[arg(long, default_value_t = 5000)]
        tasks: usize,
        /// Tasks of the overhead measurement (the worker with one slot, on a backlog).
        #[arg(long, default_value_t = 500)]
        overhead_tasks: usize,
        /// The worker's concurrency.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Create the four CWOM objects with each task (the API's default: true).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        create_cwom: bool,
        /// Keep the scratch database afterwards (its name is printed), to look at the log the phases left: how
        /// the worker's appends were batched, for example (`docs/runbooks/benchmarks.md`).
        #[arg(long)]
        keep_database: bool,
    },
    /// The service as deployed: `jct up` (or `jct serve` and `jct worker`) started as child processes on a fresh
    /// scratch database, sent `POST /tasks/enqueue` over HTTP at a steady rate; how many tasks start, and how soon.
    Service {
        /// `up`: one process; `split`: `jct serve` beside `jct worker`.
        #[arg(long, value_enum, default_value_t = service::Topology::Up)]
        topology: service::Topology,
        /// Tasks per second the client posts.
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
        /// Seconds it posts at that rate.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Tasks posted and started before the measurement.
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// The worker's concurrency.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The most requests the client keeps in flight.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds to wait, after the last answer, for tasks not yet started.
        #[arg(long, default_value_t = 60)]
        drain_seconds: u64,
    },
    /// `POST /tasks/enqueue` (create_cwom=true, unique keys) and `GET /tasks/{id}` over HTTP.
    Enqueue {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

pub async fn run(database: &DatabaseArgs, command: BenchCommand) -> anyhow::Result<()> {
    // Only scratch databases are migrated and measured; the one `DATABASE_URL` names is left as it is.
    let database = Database::connect(database).await?;
    let (scratch, keep) = match &command {
        BenchCommand::Forensics { reuse_database: Some(name), .. } => (Scratch::open(&database, name).await?, true),
        BenchCommand::Forensics { keep_database: true, .. } | BenchCommand::Worker { keep_database: true, .. } => {
            (Scratch::create(&database, "jct_kept").await?, true)
        }
        _ => (Scratch::create(&database, "jct_bench").await?, false),
    };
    let result = match command {
        BenchCommand::Append { seconds } => append::run(&scratch.pool, Duration::from_secs(seconds)).await,
        BenchCommand::Forensics { events, queries, .. } => {
            after_baseline(&scratch.pool, forensics::run(&scratch.pool, events, queries)).await
        }
        BenchCommand::Worker {
            idle_samples, rate, seconds, tasks, overhead_tasks, concurrency, create_cwom, ..
        } => {
            let options = worker::bench::BenchOptions {
                idle_samples,
                load_rate: rate,
                load_duration: Duration::from_secs(seconds),
                throughput_tasks: tasks,
                overhead_tasks,
                concurrency,
                create_cwom,
            };
            bench_worker(&scratch.pool, &options).await
        }
        BenchCommand::Service { topology, rate, seconds, warmup, concurrency, clients, drain_seconds } => {
            let options = service::ServiceOptions {
                topology,
                rate,
                duration: Duration::from_secs(seconds),
                warmup,
                concurrency,
                clients,
                drain: Duration::from_secs(drain_seconds),
            };
            let url = scratch.url(&database)?;
            after_baseline(&scratch.pool, service::run(&scratch.pool, &url, &options)).await
        }
        BenchCommand::Enqueue { seconds, concurrency } => {
            enqueue::run(&scratch.pool, Duration::from_secs(seconds), concurrency).await
        }
    };
    if keep {
        println!("# the scratch database {} is kept", scratch.name);
        scratch.pool.close().await;
    } else {
        scratch.drop(&database).await;
    }
    database.close().await;
    result
}

/// `jct bench worker`: the worker's figures, then each as a ratio to PostgreSQL's own rate measured first.
async fn bench_worker(pool: &PgPool, options: &worker::bench::BenchOptions) -> anyhow::Result<()> {
    println!("# jct bench worker (worker, projectors and PostgreSQL on this machine)");
    let baseline = raw::Baseline::measure(pool).await?;
    let report = worker::bench::bench_worker(pool, options).await?;
    println!("{report}");
    println!(
        "  against PostgreSQL's own rate in this run: end to end {:.1}% and the worker alone {:.1}% of the raw \
         inserts at c=16; the overhead per task the time of {:.1} raw inserts at c=1",
        baseline.percent_of_rate(report.tasks_per_second),
        baseline.percent_of_rate(report.worker_alone_tasks_per_second),
        baseline.in_single_inserts(report.overhead_ms_per_task)
    );
    Ok(())
}

/// Measures and prints PostgreSQL's own rate ([`raw::Baseline`]), then runs `bench`, whose figures read against it.
async fn after_baseline(
    pool: &PgPool,
    bench: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    raw::Baseline::measure(pool).await?;
    bench.await
}

/// A migrated scratch database.
struct Scratch {
    name: String,
    pool: PgPool,
}

impl Scratch {
    /// A new database named `<prefix>_<ulid>`.
    async fn create(database: &Database, prefix: &str) -> anyhow::Result<Scratch> {
        let name = format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase());
        sqlx::query(&format!("create database {name}"))
            .execute(&database.pool)
            .await
            .context("create scratch database")?;
        Scratch::connect(database, name).await
    }

    /// A scratch database an earlier run kept.
    async fn open(database: &Database, name: &str) -> anyhow::Result<Scratch> {
        anyhow::ensure!(name.starts_with("jct_kept_"), "{name} is not a database `jct bench --keep-database` kept");
        Scratch::connect(database, name.to_owned()).await
    }

    /// A pool on the database `name` of `database`'s server, connecting as `database`'s pool does (its user, and
    /// the session settings `Database::connect` gave it), migrated.
    async fn connect(database: &Database, name: String) -> anyhow::Result<Scratch> {
        let options = database.pool.connect_options().as_ref().clone().database(&name);
        let pool = store::pool_options().max_connections(40).connect_with(options).await?;
        store::MIGRATOR.run(&pool).await?;
        Ok(Scratch { name, pool })
    }

    /// The URL of this database, for the processes a bench starts.
    fn url(&self, database: &Database) -> anyhow::Result<String> {
        let mut url = reqwest::Url::parse(&database.url).context("parse DATABASE_URL")?;
        url.set_path(&format!("/{}", self.name));
        Ok(url.into())
    }

    async fn drop(self, database: &Database) {
        self.pool.close().await;
        if let Err(error) =
            sqlx::query(&format!("drop database if exists {} with (force)", self.name)).execute(&database.pool).await
        {
            tracing::warn!("failed to drop scratch database {}: {error:#}", self.name);
        }
    }
}

/// Runs `concurrency` clients, each calling `operation(client, seq)` in a loop until `duration` has passed, and
/// returns the operations done, those that answered `Ok(false)` (a failure the caller counts), and latencies.
pub async fn run_clients<F, Fut>(
    concurrency: usize,
    duration: Duration,
    operation: F,
) -> anyhow::Result<(u64, u64, Histogram<u64>)>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<bool>> + Send,
{
    let deadline = std::time::Instant::now() + duration;
    let clients: Vec<_> = (0..concurrency)
        .map(|client| {
            let operation = operation.clone();
            tokio::spawn(async move {
                let mut latencies = new_histogram();
                let mut seq = 0_u64;
                let mut failures = 0_u64;
                while std::time::Instant::now() < deadline {
                    let began = std::time::Instant::now();
                    if !operation(client, seq).await? {
                        failures += 1;
                    }
                    latencies.record(began.elapsed().as_micros() as u64)?;
                    seq += 1;
                }
                anyhow::Ok((seq, failures, latencies))
            })
        })
        .collect();
    let mut operations = 0;
    let mut failures = 0;
    let mut latencies = new_histogram();
    for client in clients {
        let (count, failed, histogram) = client.await??;
        operations += count;
        failures += failed;
        latencies.add(histogram)?;
    }
    Ok((operations, failures, latencies))
}

/// Latencies in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// One row of a results table.
pub struct Measured {
    pub label: String,
    pub operations: u64,
    pub elapsed: Duration,
    pub latencies: Histogram<u64>,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }

    pub fn print(&self, baseline: Option<f64>) {
        let ratio = baseline.map_or(String::new(), |baseline| format!("{:>7.2}x raw", self.per_second() / baseline));
        println!(
            "{:<44} {:>10.0}/s  p50 {:>8.2} ms  p99 {:>8.2} ms  {ratio}",
            self.label,
            self.per_second(),
            self.latencies.value_at_quantile(0.50) as f64 / 1000.0,
            self.latencies.value_at_quantile(0.99) as f64 / 1000.0,
        );
    }
}
