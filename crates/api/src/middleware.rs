//! What every request goes through: the trace id, authentication, the body limit, a tracing span, metrics,
//! and the mapping of escaped errors to the original's shapes.

use std::sync::Arc;
use std::time::Instant;

use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Request, Response};
use subtle::ConstantTimeEq as _;
use tracing::Instrument as _;

use crate::body::BodyLimit;
use crate::error::{to_response, unauthorized, unprocessable};
use crate::metrics::Metrics;

/// The request's trace id: the validated `X-Trace-Id`, or a new ULID.
#[derive(Debug, Clone)]
pub struct TraceId(pub String);

/// HTTP settings.
#[derive(Clone)]
pub struct HttpConfig {
    /// Accepted bearer tokens; empty means authentication is off.
    pub api_keys: Vec<String>,
    /// The most bytes a request body may have.
    pub body_limit: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig { api_keys: Vec::new(), body_limit: crate::body::DEFAULT_BODY_LIMIT }
    }
}

/// Routes that never need a key.
fn is_public(path: &str) -> bool {
    matches!(path, "/health" | "/healthz" | "/version" | "/openapi.json" | "/openapi.yaml")
        || path == "/docs"
        || path.starts_with("/docs/")
}

fn is_authorized(request: &Request, keys: &[String]) -> bool {
    let Some(header) = request.headers().get("authorization").and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let Some((scheme, token)) = header.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let token = token.trim().as_bytes();
    // Compare with every key, in constant time per key, and without stopping at the first match.
    keys.iter().fold(false, |found, key| found | bool::from(key.as_bytes().ct_eq(token)))
}

/// 1..128 printable ASCII characters.
fn valid_trace_id(text: &str) -> bool {
    (1..=128).contains(&text.len()) && text.bytes().all(|byte| (0x20..0x7f).contains(&byte))
}

/// Wraps the routes in everything above.
pub fn wrap<E: Endpoint + 'static>(
    endpoint: E,
    config: HttpConfig,
    metrics: Arc<Metrics>,
) -> impl Endpoint<Output = Response> {
    let endpoint = Arc::new(endpoint);
    poem::endpoint::make(move |mut request: Request| {
        let endpoint = endpoint.clone();
        let config = config.clone();
        let metrics = metrics.clone();
        async move {
            let started = Instant::now();
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let trace_header = request.headers().get("x-trace-id").map(|value| value.to_str().ok().map(str::to_owned));
            let (trace_id, trace_error) = match trace_header {
                None => (ulid::Ulid::new().to_string(), false),
                Some(Some(text)) if valid_trace_id(&text) => (text, false),
                Some(_) => (ulid::Ulid::new().to_string(), true),
            };
            let span = tracing::info_span!("request", %method, %path, trace_id = %trace_id);
            let mut response = async {
                if !config.api_keys.is_empty() && !is_public(&path) && !is_authorized(&request, &config.api_keys) {
                    return unauthorized();
                }
                if trace_error {
                    return unprocessable(&[domain::validation::ValidationError::new(
                        vec!["header".into(), "X-Trace-Id".into()],
                        "value_error",
                        "X-Trace-Id must be 1 to 128 printable ASCII characters",
                    )])
                    .into_response();
                }
                if request.uri().query().is_some_and(|query| query.to_ascii_lowercase().contains("%00")) {
                    // PostgreSQL cannot store or compare U+0000; no parameter may carry it.
                    return unprocessable(&[domain::validation::ValidationError::nul_char(vec!["query".into()])])
                        .into_response();
                }
                request.extensions_mut().insert(TraceId(trace_id.clone()));
                request.extensions_mut().insert(BodyLimit(config.body_limit));
                match endpoint.call(request).await {
                    Ok(response) => response.into_response(),
                    Err(error) => to_response(error),
                }
            }
            .instrument(span.clone())
            .await;
            if let Ok(value) = HeaderValue::from_str(&trace_id) {
                response.headers_mut().insert("x-trace-id", value);
            }
            let status = response.status().as_u16();
            metrics.observe_request(&method, status, started.elapsed());
            span.in_scope(|| tracing::debug!(status, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "served"));
            Ok::<Response, poem::Error>(response)
        }
    })
}
