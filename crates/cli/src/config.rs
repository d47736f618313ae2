//! Configuration: every setting is a flag and an environment variable (also read from `.env`), documented,
//! with a default. An invalid value stops the process at start with a message naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL. Unset: `jct up` runs its own cluster under `JCT_DATA_DIR` (zero-config).
    #[arg(long = "database-url", env = "DATABASE_URL", value_name = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory for JCT's own files: the managed PostgreSQL cluster and, by default, the trace root.
    #[arg(long = "data-dir", env = "JCT_DATA_DIR", value_name = "JCT_DATA_DIR", default_value = "./var")]
    pub data_dir: PathBuf,

    /// Most connections each process opens to PostgreSQL for reads, workers and projectors; the event store's
    /// batching task opens two more of its own.
    #[arg(long = "db-pool-size", env = "JCT_DB_POOL_SIZE", value_name = "JCT_DB_POOL_SIZE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub pool_size: u32,

    /// Seconds a request (or any other work) waits for a pooled connection before it gives up; an HTTP request then
    /// gets 503 with `Retry-After`. While the server is away, sqlx tries to connect again at doubling intervals of
    /// up to a fifth of this, so a shorter wait also brings requests back sooner after an outage.
    #[arg(long = "db-acquire-timeout", env = "JCT_DB_ACQUIRE_TIMEOUT_SECONDS",
          value_name = "JCT_DB_ACQUIRE_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub acquire_timeout_seconds: u64,
}

/// How the HTTP API serves.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address and port the API listens on.
    #[arg(long = "bind", env = "JCT_BIND", value_name = "JCT_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// An API key. When set (here or in `JCT_API_KEYS`), every route but /health, /healthz, /version,
    /// /openapi.json and /docs needs `Authorization: Bearer <key>`.
    #[arg(long = "api-key", env = "JCT_API_KEY", value_name = "JCT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// More API keys, comma-separated (for rotation or one key per client).
    #[arg(
        long = "api-keys",
        env = "JCT_API_KEYS",
        value_name = "JCT_API_KEYS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub api_keys: Vec<String>,

    /// Largest request body accepted, in bytes; larger gets 413.
    #[arg(long = "body-limit", env = "JCT_BODY_LIMIT_BYTES", value_name = "JCT_BODY_LIMIT_BYTES",
          default_value_t = api::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
}

impl HttpArgs {
    pub fn http_config(&self) -> api::HttpConfig {
        let api_keys = self
            .api_key
            .iter()
            .chain(&self.api_keys)
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty())
            .collect();
        api::HttpConfig { api_keys, body_limit: self.body_limit }
    }
}

/// The policy gate and the use cases.
#[derive(Debug, Clone, Args)]
pub struct AppArgs {
    /// Repository prefixes the policy gate allows, comma-separated (e.g. `myorg/,other-org/`). Empty denies
    /// every repository, as the original did.
    #[arg(
        long = "allowed-repo-prefixes",
        env = "JCT_ALLOWED_REPO_PREFIXES",
        value_name = "JCT_ALLOWED_REPO_PREFIXES",
        default_value = ""
    )]
    pub allowed_repo_prefixes: String,
}

impl AppArgs {
    pub fn app_config(&self) -> app::Config {
        app::Config {
            policy: domain::task::PolicyConfig::from_prefixes(&self.allowed_repo_prefixes),
            ..app::Config::default()
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Logging.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// `pretty` for people, `json` for machines. Levels come from `RUST_LOG` (default `info`).
    #[arg(long = "log-format", env = "LOG_FORMAT", value_name = "LOG_FORMAT", default_value = "pretty", global = true)]
    pub log_format: LogFormat,
}
