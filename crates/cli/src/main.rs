//! The `jct` binary: the composition root. It reads configuration, sets up tracing, opens the database, wires
//! the parts together and handles signals; everything else lives in the library crates.

mod bench;
mod config;
mod database;
mod telemetry;
mod worker_args;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{AppArgs, DatabaseArgs, HttpArgs, LogArgs};
use crate::database::Database;
use crate::worker_args::{TraceArgs, WorkerArgs};

/// JCT: the control tower for AI-assisted development work.
#[derive(Debug, Parser)]
#[command(name = "jct", version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process (API, projectors, a worker); zero-config without DATABASE_URL.
    Up {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        app: AppArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// Run the HTTP API and the projectors against DATABASE_URL (or the managed cluster).
    Serve {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        app: AppArgs,
    },
    /// Run a worker: claim queued tasks, run their handlers, append their events; any number against one
    /// PostgreSQL.
    Worker {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        app: AppArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// Apply the database migrations and exit.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Read models: status, rebuild.
    Projections {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The trace folders (the `trace_folders` projection).
        #[command(flatten)]
        traces: TraceArgs,
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// The audit log: verify the hash chain, export a trace.
    Audit {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Fold the read models as they were at a position or time into a separate schema, for inspection.
    Replay {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The last position to include, or an RFC 3339 time (every event up to it).
        #[arg(long)]
        until: String,
        /// The schema to build in (default `replay_<position>`); replaced if it exists.
        #[arg(long)]
        schema: Option<String>,
    },
    /// Benchmarks that print figures (never pass or fail on time).
    Bench {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Print the OpenAPI spec (YAML) to stdout.
    Openapi,
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Each projection's code version, live version, checkpoint and lag.
    Status,
    /// Build a projection from the log beside the live one and swap it in, showing progress (`trace_folders`
    /// renders every folder again in place: each file is replaced atomically, with the same bytes from the same
    /// events).
    Rebuild {
        /// The projection's name (see `jct projections status`).
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain; exit 1 and name the first bad position if it does not verify.
    Verify,
    /// Write the events of one trace as JSON lines to stdout, in position order.
    Export {
        #[arg(long = "trace-id")]
        trace_id: String,
    },
}

/// mimalloc instead of glibc's malloc: the service allocates many small, short-lived JSON values per request,
/// where glibc's allocator showed up at ~12% of the server's CPU in `jct bench enqueue`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("failed: {error:#}");
            eprintln!("jct: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up { database, http, app, worker } => serve(&database, &http, &app, Some(&worker)).await?,
        Command::Serve { database, http, app } => serve(&database, &http, &app, None).await?,
        Command::Worker { database, app, worker } => run_worker(&database, &app, &worker).await?,
        Command::Migrate { database } => {
            let database = Database::open(&database).await?;
            tracing::info!("migrations applied");
            database.close().await;
        }
        Command::Projections { database, traces, command } => {
            let trace_folders = traces.trace_projection(&database.data_dir.join("traces"));
            let database = Database::open(&database).await?;
            let result = projections_command(&database, trace_folders, command).await;
            database.close().await;
            result?;
        }
        Command::Audit { database, command } => {
            let database = Database::open(&database).await?;
            let result = audit_command(&database, command).await;
            database.close().await;
            return result;
        }
        Command::Replay { database, until, schema } => {
            let database = Database::open(&database).await?;
            let result = replay(&database, &until, schema).await;
            database.close().await;
            result?;
        }
        Command::Bench { database, command } => bench::run(&database, command).await?,
        Command::Openapi => print!("{}", api::spec::spec_yaml()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
}

async fn run_worker(database_args: &DatabaseArgs, app: &AppArgs, worker: &WorkerArgs) -> anyhow::Result<()> {
    let config = worker.worker_config(&database_args.data_dir.join("traces"))?;
    let database = Database::open(database_args).await?;
    let app = app::App::start(database.pool.clone(), app.app_config()).await?;
    let result = worker::run(app, config, shutdown_signal()).await;
    database.close().await;
    result
}

async fn serve(
    database_args: &DatabaseArgs,
    http: &HttpArgs,
    app: &AppArgs,
    worker: Option<&WorkerArgs>,
) -> anyhow::Result<()> {
    let worker_config =
        worker.map(|worker| worker.worker_config(&database_args.data_dir.join("traces"))).transpose()?;
    let database = Database::open(database_args).await?;
    let app = app::App::start(database.pool.clone(), app.app_config()).await?;
    let acceptor = api::bind(&http.bind.to_string()).await.with_context(|| format!("bind JCT_BIND {}", http.bind))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let projector = {
        let mut stopped = stopped.clone();
        tokio::spawn(projections::runner::run(
            app.pool().clone(),
            app.projections().to_vec(),
            app.upcasters().clone(),
            Duration::from_secs(1),
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ))
    };
    let worker = worker_config.map(|config| {
        let mut stopped = stopped.clone();
        tokio::spawn(worker::run(app.clone(), config, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    });
    let endpoint = api::endpoint(app.clone(), http.http_config());
    let mut stopped_http = stopped.clone();
    let server = api::serve(acceptor, endpoint, async move {
        let _ = stopped_http.wait_for(|stop| *stop).await;
    });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.context("serve HTTP")?,
        () = shutdown_signal() => {
            let _ = stop.send(true);
            server.await.context("serve HTTP")?;
        }
    }
    let _ = stop.send(true);
    if let Some(worker) = worker {
        match worker.await {
            Ok(Err(error)) => tracing::error!("worker failed: {error:#}"),
            Err(error) => tracing::error!("worker task failed: {error}"),
            Ok(Ok(())) => {}
        }
    }
    let _ = projector.await;
    database.close().await;
    Ok(())
}

async fn projections_command(
    database: &Database,
    trace_folders: projections::trace::TraceProjection,
    command: ProjectionsCommand,
) -> anyhow::Result<()> {
    let mut all = app::all_projections();
    all.push(Arc::new(trace_folders));
    match command {
        ProjectionsCommand::Status => {
            let statuses = projections::runner::status(&database.pool, &all).await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<16} {:>6} {:>6} {:>12} {:>12} {:>10}",
                "projection", "code", "live", "checkpoint", "head", "lag"
            )?;
            for status in statuses {
                let show = |value: Option<i64>| value.map_or("-".to_owned(), |value| value.to_string());
                writeln!(
                    out,
                    "{:<16} {:>6} {:>6} {:>12} {:>12} {:>10}",
                    status.name,
                    status.code_version,
                    show(status.live_version.map(i64::from)),
                    show(status.checkpoint),
                    status.head,
                    show(status.lag),
                )?;
            }
        }
        ProjectionsCommand::Rebuild { name } => {
            let projection = all.iter().find(|projection| projection.name() == name).with_context(|| {
                let names: Vec<_> = all.iter().map(|projection| projection.name()).collect();
                format!("no projection named {name:?}; there are: {}", names.join(", "))
            })?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, eta {eta})",
                )
                .expect("a valid template"),
            );
            bar.set_message(format!("rebuild {name}"));
            let started = std::time::Instant::now();
            let on_progress = |progress: projections::rebuild::Progress| {
                bar.set_length(progress.head.max(0) as u64);
                bar.set_position(progress.position.max(0) as u64);
            };
            let rebuilt =
                projections::rebuild::rebuild(&database.pool, projection.as_ref(), &app::upcasters(), &on_progress)
                    .await?;
            bar.finish();
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "rebuilt {name} at version {} to position {}: {} events in {seconds:.2} s ({:.0} events/s)",
                rebuilt.version,
                rebuilt.position,
                rebuilt.applied,
                rebuilt.applied as f64 / seconds.max(1e-9)
            );
        }
    }
    Ok(())
}

async fn audit_command(database: &Database, command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify => {
            let started = std::time::Instant::now();
            let report = store::verify::verify_chain(&database.pool).await?;
            let seconds = started.elapsed().as_secs_f64();
            println!("{}", serde_json::to_string_pretty(&report)?);
            eprintln!(
                "verified {} events in {seconds:.2} s ({:.0} events/s)",
                report.events_checked,
                report.events_checked as f64 / seconds.max(1e-9)
            );
            Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        AuditCommand::Export { trace_id } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for event in store::read::read_trace(&database.pool, &trace_id).await? {
                writeln!(out, "{}", event.to_json())?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn replay(database: &Database, until: &str, schema: Option<String>) -> anyhow::Result<()> {
    let until = match app::audit::AsOf::parse(until) {
        Some(app::audit::AsOf::Position(position)) => position,
        Some(app::audit::AsOf::Time(ts)) => store::audit::position_at(&database.pool, ts).await?,
        None => anyhow::bail!("--until {until:?} is neither a position nor an RFC 3339 time"),
    };
    let schema = schema.unwrap_or_else(|| format!("replay_{until}"));
    let bar = indicatif::ProgressBar::new(until.max(0) as u64);
    let applied = projections::rebuild::replay_into(
        &database.pool,
        &app::all_projections(),
        &app::upcasters(),
        &schema,
        until,
        &|progress| bar.set_position(progress.position.max(0) as u64),
    )
    .await?;
    bar.finish_and_clear();
    let tables: Vec<(String,)> =
        sqlx::query_as("select tablename::text from pg_tables where schemaname = $1 order by tablename")
            .bind(&schema)
            .fetch_all(&database.pool)
            .await?;
    println!("replayed {applied} events up to position {until} into schema {schema}");
    for (table,) in tables {
        let rows: i64 =
            sqlx::query_scalar(&format!("select count(*) from {schema}.{table}")).fetch_one(&database.pool).await?;
        println!("  {schema}.{table}: {rows} rows");
    }
    println!("inspect with: set search_path to {schema}, public;");
    Ok(())
}
