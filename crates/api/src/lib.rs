//! The HTTP API: poem-openapi operations, their DTOs and error shapes, auth, and the served spec.
//!
//! Handlers are thin: parse, call one `app` function, map the outcome to a per-operation response enum, so
//! every status code and error body appears in the spec.
//!
//! Architecture invariant: no SQL and no event handling here; this crate depends on `app`, never on `store`.

pub(crate) mod audit;
pub mod body;
mod cwom;
mod doc;
pub mod error;
pub mod metrics;
pub mod middleware;
pub mod spec;
mod system;
pub mod tasks;

use std::sync::Arc;
use std::time::Duration;

use app::App;
use futures_util_shutdown::Shutdown;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::{Endpoint, EndpointExt, Route, Server};
use poem_openapi::{OpenApiService, Tags};

pub use body::DEFAULT_BODY_LIMIT;
pub use middleware::HttpConfig;

mod futures_util_shutdown {
    //! The shutdown future type `serve` accepts.
    pub trait Shutdown: std::future::Future<Output = ()> + Send + 'static {}
    impl<F: std::future::Future<Output = ()> + Send + 'static> Shutdown for F {}
}

/// Operation groups in the spec.
#[derive(Tags)]
pub enum ApiTags {
    /// Liveness, readiness, version, metrics.
    System,
    /// Submitting and tracking tasks.
    Tasks,
    /// The Canonical Work Object Model: repos, issues, context packets, constraint snapshots, doctrine, runs
    /// and artifacts.
    Cwom,
    /// The event log: queries, traces, histories, verification.
    Audit,
}

/// The OpenAPI service: every operation, for serving; its document, rewritten for client generators, is [`spec`]'s.
pub fn openapi_service() -> OpenApiService<(system::SystemApi, tasks::TasksApi, cwom::CwomApi, audit::AuditApi), ()> {
    OpenApiService::new(
        (system::SystemApi, tasks::TasksApi, cwom::CwomApi, audit::AuditApi),
        "JCT",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "The control tower for AI-assisted development work: submit tasks, track them, and query the \
             event log that records everything. Every command appends events to the audit log.\n\n\
             While the database is unavailable (restarting, unreachable, or no connection free in time), any \
             operation that uses it answers 503 (declared on each) with `{\"detail\": \"The database is \
             unavailable; retry shortly\"}` and a `Retry-After` header (seconds). A command answered 503 may \
             still have been recorded if the database went away while it committed; an enqueue sent again with \
             the same `idempotency_key` is safe either way.",
    )
    .server("http://127.0.0.1:8000")
}

/// The whole HTTP application: the API, `/openapi.json` and `/openapi.yaml` ([`spec`]), `/docs`, and the middleware.
pub fn endpoint(app: App, config: HttpConfig) -> impl Endpoint<Output = poem::Response> {
    let service = openapi_service();
    let (json, yaml) = (spec::spec_json(), spec::spec_yaml());
    let spec_json = poem::endpoint::make_sync(move |_| {
        poem::Response::builder().content_type("application/json").body(json.clone())
    });
    let spec_yaml = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/x-yaml")
            .header("Content-Disposition", "inline; filename=\"spec.yaml\"")
            .body(yaml.clone())
    });
    let docs = service.swagger_ui();
    let metrics = Arc::new(metrics::Metrics::new());
    let routes = Route::new()
        .nest("/", service)
        .at("/openapi.json", spec_json)
        .at("/openapi.yaml", spec_yaml)
        .nest("/docs", docs)
        .data(app)
        .data(metrics.clone());
    middleware::wrap(routes, config, metrics)
}

/// Binds the listening socket. Bind port 0 in tests and read the address from the acceptor.
pub async fn bind(address: &str) -> std::io::Result<TcpAcceptor> {
    TcpListener::bind(address.to_owned()).into_acceptor().await
}

/// Serves until `shutdown` resolves, then lets requests in flight finish (up to 10 s).
pub async fn serve(
    acceptor: TcpAcceptor,
    endpoint: impl Endpoint + 'static,
    shutdown: impl Shutdown,
) -> std::io::Result<()> {
    let address = acceptor.local_addr();
    tracing::info!(?address, "serving HTTP");
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(endpoint, shutdown, Some(Duration::from_secs(10)))
        .await
}
