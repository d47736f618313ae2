//! System routes: liveness, readiness with the database, version, Prometheus metrics.

use std::sync::Arc;

use app::App;
use poem::web::Data;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::error::ErrorDetail;
use crate::metrics::Metrics;
use crate::ApiTags;

/// `{"status": "ok"}`.
#[derive(Debug, Object)]
pub struct Health {
    pub status: String,
}

/// Readiness: whether the service and its database answer.
#[derive(Debug, Object)]
pub struct Healthz {
    pub ok: bool,
    pub db: bool,
}

/// The running version.
#[derive(Debug, Object)]
pub struct Version {
    pub version: String,
}

#[derive(ApiResponse)]
pub enum MetricsResponse {
    /// Prometheus text format.
    #[oai(status = 200)]
    Ok(PlainText<String>),
    /// A key is configured and the request did not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorDetail>),
    /// The database is unavailable for now (restarting, unreachable, or no connection free in time): `{"detail": "The
    /// database is unavailable; retry shortly"}`, with `Retry-After` in seconds. A command answered 503 may still have
    /// been recorded: an enqueue sent again with its `idempotency_key` is safe.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>, #[oai(header = "Retry-After")] u32),
}

/// System routes.
pub struct SystemApi;

#[OpenApi]
impl SystemApi {
    /// Liveness: answers without touching the database.
    #[oai(path = "/health", method = "get", operation_id = "health", tag = "ApiTags::System")]
    async fn health(&self) -> Json<Health> {
        Json(Health { status: "ok".into() })
    }

    /// Readiness: checks the database with `select 1`. Always 200; `ok` and `db` are false when it is down.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz", tag = "ApiTags::System")]
    async fn healthz(&self, app: Data<&App>) -> Json<Healthz> {
        let db = app.database_is_up().await;
        Json(Healthz { ok: db, db })
    }

    /// The version of the running service.
    #[oai(path = "/version", method = "get", operation_id = "version", tag = "ApiTags::System")]
    async fn version(&self) -> Json<Version> {
        Json(Version { version: env!("CARGO_PKG_VERSION").into() })
    }

    /// Metrics in the Prometheus text format: HTTP requests and latencies, events appended, projection lag,
    /// tasks by status, worker claims and failures, and how this process's appends went.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics", tag = "ApiTags::System")]
    async fn metrics(&self, app: Data<&App>, metrics: Data<&Arc<Metrics>>) -> poem::Result<MetricsResponse> {
        let mut text = metrics.render();
        text.push_str(&app::system::database_metrics(&app).await.map_err(|error| crate::error::internal(&error))?);
        text.push_str(&app::system::append_metrics(&app).map_err(|error| crate::error::internal(&error))?);
        Ok(MetricsResponse::Ok(PlainText(text)))
    }
}
