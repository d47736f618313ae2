//! The policy gate: a pure check of a valid [`TaskSpec`] against the repository allow-list and the V1 limits
//! (exact codes, messages and order of the original), returning a new, normalised spec.

use serde_json::{json, Value};

use super::spec::{
    py_strip, TaskSpec, DEFAULT_REF, DEFAULT_TIME_BUDGET_SECONDS, MAX_TIME_BUDGET_SECONDS, MIN_TIME_BUDGET_SECONDS,
};

/// Error codes of [`PolicyError`], in evaluation order.
pub mod codes {
    /// Unreachable through [`super::evaluate`]: [`crate::task::Operation`] cannot hold another value and the
    /// schema rejects other strings first.
    pub const INVALID_OPERATION: &str = "INVALID_OPERATION";
    /// The normalised repository matches no allowed prefix.
    pub const REPO_NOT_ALLOWED: &str = "REPO_NOT_ALLOWED";
    /// The time budget is below `min_time_budget_seconds`.
    pub const TIME_BUDGET_TOO_LOW: &str = "TIME_BUDGET_TOO_LOW";
    /// The time budget is above `max_time_budget_seconds`.
    pub const TIME_BUDGET_TOO_HIGH: &str = "TIME_BUDGET_TOO_HIGH";
    /// `constraints.allow_network` is true.
    pub const NETWORK_ACCESS_DENIED: &str = "NETWORK_ACCESS_DENIED";
    /// `constraints.allow_secrets` is true.
    pub const SECRETS_ACCESS_DENIED: &str = "SECRETS_ACCESS_DENIED";
}

/// The gate's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Repository prefixes (compared lowercased with a plain `starts_with`). Empty denies every repository.
    pub allowed_repo_prefixes: Vec<String>,
    /// Default 30.
    pub min_time_budget_seconds: u32,
    /// Default 86400.
    pub max_time_budget_seconds: u32,
    /// Default 900; informational (the schema applies the default).
    pub default_time_budget_seconds: u32,
}

impl Default for PolicyConfig {
    fn default() -> PolicyConfig {
        PolicyConfig {
            allowed_repo_prefixes: Vec::new(),
            min_time_budget_seconds: MIN_TIME_BUDGET_SECONDS,
            max_time_budget_seconds: MAX_TIME_BUDGET_SECONDS,
            default_time_budget_seconds: DEFAULT_TIME_BUDGET_SECONDS,
        }
    }
}

impl PolicyConfig {
    /// The default config with the allow-list parsed from a `JCT_ALLOWED_REPO_PREFIXES`-style string.
    pub fn from_prefixes(text: &str) -> PolicyConfig {
        PolicyConfig { allowed_repo_prefixes: parse_prefixes(text), ..PolicyConfig::default() }
    }
}

/// Parses a comma-separated prefix list: items are trimmed and empty items dropped (`""` → `[]`).
pub fn parse_prefixes(text: &str) -> Vec<String> {
    text.split(',').map(py_strip).filter(|item| !item.is_empty()).map(str::to_owned).collect()
}

/// A policy rejection. Displays as `"CODE: MESSAGE"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PolicyError {
    /// One of [`codes`].
    pub code: &'static str,
    /// The human-readable reason, worded as the original.
    pub message: String,
}

impl PolicyError {
    /// A new rejection.
    pub fn new(code: &'static str, message: impl Into<String>) -> PolicyError {
        PolicyError { code, message: message.into() }
    }

    /// `{"error":"policy_violation","code":CODE,"message":MSG}` (the HTTP layer wraps it in `{"detail": ...}`).
    pub fn to_json(&self) -> Value {
        json!({"error": "policy_violation", "code": self.code, "message": self.message})
    }
}

/// Normalises a repository: trim surrounding whitespace, remove ONE trailing `.git` (case-sensitive, so `.GIT`
/// stays), lowercase.
pub fn normalise_repo(repo: &str) -> String {
    let trimmed = py_strip(repo);
    trimmed.strip_suffix(".git").unwrap_or(trimmed).to_lowercase()
}

/// Checks the rules in order (the first failure wins): repository allow-list, time budget minimum and maximum,
/// network, secrets. Returns a NEW spec: repo normalised, objective trimmed, empty `ref` → `"main"`, both flags
/// false; everything else (acceptance criteria and evidence requirements included, SPEC §9.5) copied.
pub fn evaluate(spec: &TaskSpec, config: &PolicyConfig) -> Result<TaskSpec, PolicyError> {
    let repo = normalise_repo(&spec.target.repo);
    let allowed = config.allowed_repo_prefixes.iter().any(|prefix| repo.starts_with(&prefix.to_lowercase()));
    if !allowed {
        return Err(PolicyError::new(
            codes::REPO_NOT_ALLOWED,
            format!(
                "Repository '{}' is not in the allowed namespace. Allowed prefixes: {}",
                spec.target.repo,
                config.allowed_repo_prefixes.join(", ")
            ),
        ));
    }

    let budget = spec.constraints.time_budget_seconds;
    if budget < config.min_time_budget_seconds {
        return Err(PolicyError::new(
            codes::TIME_BUDGET_TOO_LOW,
            format!("Time budget {budget}s is below minimum ({}s)", config.min_time_budget_seconds),
        ));
    }
    if budget > config.max_time_budget_seconds {
        return Err(PolicyError::new(
            codes::TIME_BUDGET_TOO_HIGH,
            format!("Time budget {budget}s exceeds maximum ({}s)", config.max_time_budget_seconds),
        ));
    }
    if spec.constraints.allow_network {
        return Err(PolicyError::new(
            codes::NETWORK_ACCESS_DENIED,
            "Network access is not allowed in V1. Set constraints.allow_network to false.",
        ));
    }
    if spec.constraints.allow_secrets {
        return Err(PolicyError::new(
            codes::SECRETS_ACCESS_DENIED,
            "Secrets access is not allowed in V1. Set constraints.allow_secrets to false.",
        ));
    }

    let mut normalised = spec.clone();
    normalised.target.repo = repo;
    if normalised.target.git_ref.is_empty() {
        normalised.target.git_ref = DEFAULT_REF.to_owned();
    }
    normalised.objective = py_strip(&spec.objective).to_owned();
    normalised.constraints.allow_network = false;
    normalised.constraints.allow_secrets = false;
    Ok(normalised)
}
