//! Unit tests of TaskSpec parsing, the policy gate and the CWOM adapter (the original's `tests/test_policy.py`
//! cases, reference §2.3, plus the decisions of SPEC §9).

use chrono::{TimeZone, Utc};
use serde_json::{json, Map, Value};

use super::policy::codes;
use super::spec::{validate, Model};
use super::*;
use crate::event::ActorKind;
use crate::validation::LocPart;

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/// A valid canonical body (the repo's `docs/examples/task-create-v1.json`, with a `testorg/` repo).
fn body() -> Value {
    json!({
        "version": "1.0",
        "idempotency_key": "2025-12-08T14:05:00Z-devops-ctl-001",
        "requested_by": {"kind": "human", "id": "alice", "label": "Alice Developer"},
        "objective": "Add a /healthz endpoint that returns {\"status\":\"ok\"} and a pytest that verifies 200 + body.",
        "operation": "code_change",
        "target": {"repo": "testorg/example-service", "ref": "main", "path": ""},
        "constraints": {"time_budget_seconds": 900, "allow_network": false, "allow_secrets": false},
        "inputs": {},
        "metadata": {"tags": ["stage-1", "api"]}
    })
}

/// A minimal valid body with the given operation and repo.
fn minimal(operation: &str, repo: &str) -> Value {
    json!({
        "requested_by": {"kind": "human", "id": "tester"},
        "objective": "Test objective",
        "operation": operation,
        "target": {"repo": repo}
    })
}

/// `body()` with `pointer` (a JSON pointer to an existing parent object) set to `value`.
fn with(mut body: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a slash");
    let target = if parent.is_empty() { &mut body } else { body.pointer_mut(parent).expect("parent exists") };
    target.as_object_mut().expect("parent is an object").insert(key.to_owned(), value);
    body
}

/// `body` without the key at `pointer`.
fn without(mut body: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a slash");
    let target = if parent.is_empty() { &mut body } else { body.pointer_mut(parent).expect("parent exists") };
    target.as_object_mut().expect("parent is an object").remove(key);
    body
}

fn parse(body: &Value) -> TaskSpec {
    match parse_task_spec(body) {
        Ok(spec) => spec,
        Err(errors) => panic!("expected a valid spec, got {errors:?}"),
    }
}

/// The rendered errors, `[{"loc","msg","type"}, ...]`.
fn errors(body: &Value) -> Vec<Value> {
    match parse_task_spec(body) {
        Ok(spec) => panic!("expected validation errors, got {spec:?}"),
        Err(errors) => errors.iter().map(|error| error.to_json()).collect(),
    }
}

fn one_error(body: &Value, loc: Value, kind: &str, msg: &str) {
    assert_eq!(errors(body), vec![json!({"loc": loc, "msg": msg, "type": kind})]);
}

fn config(prefixes: &[&str]) -> PolicyConfig {
    PolicyConfig {
        allowed_repo_prefixes: prefixes.iter().map(|prefix| (*prefix).to_owned()).collect(),
        ..Default::default()
    }
}

fn testorg() -> PolicyConfig {
    config(&["testorg/"])
}

fn rejected(spec: &TaskSpec, config: &PolicyConfig) -> PolicyError {
    match evaluate(spec, config) {
        Ok(normalised) => panic!("expected a policy error, got {normalised:?}"),
        Err(error) => error,
    }
}

fn allowed(spec: &TaskSpec, config: &PolicyConfig) -> TaskSpec {
    match evaluate(spec, config) {
        Ok(normalised) => normalised,
        Err(error) => panic!("expected the policy to pass, got {error}"),
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Prefix parsing (6)

#[test]
fn prefixes_single() {
    assert_eq!(parse_prefixes("myorg/"), ["myorg/"]);
}

#[test]
fn prefixes_multiple() {
    assert_eq!(parse_prefixes("myorg/,anotherorg/"), ["myorg/", "anotherorg/"]);
}

#[test]
fn prefixes_whitespace_trimmed() {
    assert_eq!(parse_prefixes("  org1/ , org2/  "), ["org1/", "org2/"]);
}

#[test]
fn prefixes_empty_items_dropped() {
    assert_eq!(parse_prefixes("myorg/,,anotherorg/"), ["myorg/", "anotherorg/"]);
}

#[test]
fn prefixes_empty_string() {
    assert_eq!(parse_prefixes(""), Vec::<String>::new());
}

#[test]
fn prefixes_whitespace_only() {
    assert_eq!(parse_prefixes("   "), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------------------------
// Repo normalisation (4) and the `.GIT` quirk

#[test]
fn normalise_strips_git_suffix() {
    assert_eq!(normalise_repo("myorg/repo.git"), "myorg/repo");
}

#[test]
fn normalise_strips_whitespace() {
    assert_eq!(normalise_repo("  myorg/repo  "), "myorg/repo");
}

#[test]
fn normalise_lowercases() {
    assert_eq!(normalise_repo("MyOrg/Repo"), "myorg/repo");
}

#[test]
fn normalise_combined() {
    assert_eq!(normalise_repo("  MyOrg/Repo.git  "), "myorg/repo");
}

#[test]
fn normalise_keeps_uppercase_git_suffix_and_strips_only_one() {
    assert_eq!(normalise_repo("TESTORG/R.GIT"), "testorg/r.git");
    assert_eq!(normalise_repo("TestOrg/MyRepo.git"), "testorg/myrepo");
    assert_eq!(normalise_repo("org/r.git.git"), "org/r.git");
}

// ---------------------------------------------------------------------------------------------------------------
// Operation (4 parametrised cases)

#[test]
fn each_operation_passes_and_is_preserved() {
    for (text, operation) in [
        ("code_change", Operation::CodeChange),
        ("docs", Operation::Docs),
        ("analysis", Operation::Analysis),
        ("ops", Operation::Ops),
    ] {
        let spec = parse(&minimal(text, "testorg/repo"));
        assert_eq!(spec.operation, operation);
        assert_eq!(allowed(&spec, &testorg()).operation, operation);
        assert_eq!(operation.as_str(), text);
        assert_eq!(Operation::parse(text), Some(operation));
    }
    assert_eq!(Operation::parse("deploy"), None);
}

#[test]
fn invalid_operation_is_a_schema_error() {
    one_error(
        &minimal("deploy", "testorg/repo"),
        json!(["body", "operation"]),
        "literal_error",
        "Input should be 'code_change', 'docs', 'analysis' or 'ops'",
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Repo allow-list (8)

#[test]
fn allow_list_accepts_matching_repo() {
    let spec = parse(&minimal("code_change", "testorg/my-repo"));
    assert_eq!(allowed(&spec, &testorg()).target.repo, "testorg/my-repo");
}

#[test]
fn allow_list_normalises_git_suffix() {
    let spec = parse(&minimal("code_change", "testorg/my-repo.git"));
    assert_eq!(allowed(&spec, &testorg()).target.repo, "testorg/my-repo");
}

#[test]
fn allow_list_normalises_case() {
    let spec = parse(&minimal("code_change", "TestOrg/My-Repo"));
    assert_eq!(allowed(&spec, &testorg()).target.repo, "testorg/my-repo");
}

#[test]
fn allow_list_rejects_other_namespace() {
    let error = rejected(&parse(&minimal("code_change", "unauthorized/repo")), &testorg());
    assert_eq!(error.code, "REPO_NOT_ALLOWED");
    assert_eq!(
        error.message,
        "Repository 'unauthorized/repo' is not in the allowed namespace. Allowed prefixes: testorg/"
    );
}

#[test]
fn allow_list_message_shows_repo_as_given() {
    let error = rejected(&parse(&minimal("code_change", " Evil/R.git ")), &config(&["testorg/", "Other/"]));
    assert_eq!(
        error.message,
        "Repository ' Evil/R.git ' is not in the allowed namespace. Allowed prefixes: testorg/, Other/"
    );
}

#[test]
fn allow_list_custom_prefix_accepts() {
    let spec = parse(&minimal("code_change", "custom-org/my-repo"));
    assert_eq!(allowed(&spec, &config(&["custom-org/"])).target.repo, "custom-org/my-repo");
}

#[test]
fn allow_list_custom_prefix_rejects_default_org() {
    let error = rejected(&parse(&minimal("code_change", "testorg/my-repo")), &config(&["custom-org/"]));
    assert_eq!(error.code, codes::REPO_NOT_ALLOWED);
}

#[test]
fn empty_allow_list_denies_everything() {
    let error = rejected(&parse(&minimal("code_change", "any-org/any-repo")), &PolicyConfig::default());
    assert_eq!(error.code, "REPO_NOT_ALLOWED");
    assert_eq!(error.message, "Repository 'any-org/any-repo' is not in the allowed namespace. Allowed prefixes: ");
}

#[test]
fn allow_list_several_prefixes() {
    let config = PolicyConfig::from_prefixes("org1/,org2/,org3/");
    for repo in ["org1/repo", "org2/repo", "org3/repo"] {
        assert_eq!(allowed(&parse(&minimal("docs", repo)), &config).target.repo, repo);
    }
}

#[test]
fn allow_list_prefix_is_lowercased_and_plain_starts_with() {
    let spec = parse(&minimal("docs", "myorganization/x"));
    assert_eq!(allowed(&spec, &config(&["MyOrg"])).target.repo, "myorganization/x");
}

// ---------------------------------------------------------------------------------------------------------------
// Time budget (5) and the policy's own limits

#[test]
fn time_budget_in_range_passes_unchanged() {
    for seconds in [3600, 30, 86400] {
        let spec = parse(&with(body(), "/constraints/time_budget_seconds", json!(seconds)));
        assert_eq!(allowed(&spec, &testorg()).constraints.time_budget_seconds, seconds);
    }
}

#[test]
fn time_budget_29_is_a_schema_error() {
    one_error(
        &with(body(), "/constraints/time_budget_seconds", json!(29)),
        json!(["body", "constraints", "time_budget_seconds"]),
        "greater_than_equal",
        "Input should be greater than or equal to 30",
    );
}

#[test]
fn time_budget_86401_is_a_schema_error() {
    one_error(
        &with(body(), "/constraints/time_budget_seconds", json!(86401)),
        json!(["body", "constraints", "time_budget_seconds"]),
        "less_than_equal",
        "Input should be less than or equal to 86400",
    );
}

#[test]
fn time_budget_policy_limits() {
    let config = PolicyConfig { min_time_budget_seconds: 60, max_time_budget_seconds: 1800, ..testorg() };
    let low = parse(&with(body(), "/constraints/time_budget_seconds", json!(59)));
    let error = rejected(&low, &config);
    assert_eq!((error.code, error.message.as_str()), ("TIME_BUDGET_TOO_LOW", "Time budget 59s is below minimum (60s)"));
    let high = parse(&with(body(), "/constraints/time_budget_seconds", json!(1801)));
    let error = rejected(&high, &config);
    assert_eq!(
        (error.code, error.message.as_str()),
        ("TIME_BUDGET_TOO_HIGH", "Time budget 1801s exceeds maximum (1800s)")
    );
    let edge = parse(&with(body(), "/constraints/time_budget_seconds", json!(1800)));
    assert_eq!(allowed(&edge, &config).constraints.time_budget_seconds, 1800);
}

#[test]
fn time_budget_digit_string_and_whole_float_are_coerced() {
    let spec = parse(&with(body(), "/constraints/time_budget_seconds", json!("60")));
    assert_eq!(spec.constraints.time_budget_seconds, 60);
    let spec = parse(&with(body(), "/constraints/time_budget_seconds", json!(60.0)));
    assert_eq!(spec.constraints.time_budget_seconds, 60);
}

#[test]
fn time_budget_fraction_and_garbage_rejected() {
    one_error(
        &with(body(), "/constraints/time_budget_seconds", json!(60.5)),
        json!(["body", "constraints", "time_budget_seconds"]),
        "int_from_float",
        "Input should be a valid integer, got a number with a fractional part",
    );
    one_error(
        &with(body(), "/constraints/time_budget_seconds", json!("sixty")),
        json!(["body", "constraints", "time_budget_seconds"]),
        "int_parsing",
        "Input should be a valid integer, unable to parse string as an integer",
    );
    one_error(
        &with(body(), "/constraints/time_budget_seconds", json!(null)),
        json!(["body", "constraints", "time_budget_seconds"]),
        "int_type",
        "Input should be a valid integer",
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Network (2), secrets (2), rule order

#[test]
fn network_false_passes() {
    let spec = parse(&with(body(), "/constraints/allow_network", json!(false)));
    assert!(!allowed(&spec, &testorg()).constraints.allow_network);
}

#[test]
fn network_true_denied() {
    let spec = parse(&with(body(), "/constraints/allow_network", json!(true)));
    assert!(spec.constraints.allow_network, "the schema accepts true");
    let error = rejected(&spec, &testorg());
    assert_eq!(error.code, "NETWORK_ACCESS_DENIED");
    assert_eq!(error.message, "Network access is not allowed in V1. Set constraints.allow_network to false.");
}

#[test]
fn secrets_false_passes() {
    let spec = parse(&with(body(), "/constraints/allow_secrets", json!(false)));
    assert!(!allowed(&spec, &testorg()).constraints.allow_secrets);
}

#[test]
fn secrets_true_denied() {
    let spec = parse(&with(body(), "/constraints/allow_secrets", json!(true)));
    let error = rejected(&spec, &testorg());
    assert_eq!(error.code, "SECRETS_ACCESS_DENIED");
    assert_eq!(error.message, "Secrets access is not allowed in V1. Set constraints.allow_secrets to false.");
}

#[test]
fn bad_repo_beats_network() {
    let spec = parse(&with(with(body(), "/target/repo", json!("evil/r")), "/constraints/allow_network", json!(true)));
    assert_eq!(rejected(&spec, &testorg()).code, "REPO_NOT_ALLOWED");
}

#[test]
fn network_beats_secrets() {
    let spec = parse(&with(
        with(body(), "/constraints/allow_network", json!(true)),
        "/constraints/allow_secrets",
        json!(true),
    ));
    assert_eq!(rejected(&spec, &testorg()).code, "NETWORK_ACCESS_DENIED");
}

#[test]
fn time_budget_beats_network() {
    let config = PolicyConfig { min_time_budget_seconds: 100, ..testorg() };
    let spec = parse(&with(
        with(body(), "/constraints/time_budget_seconds", json!(60)),
        "/constraints/allow_network",
        json!(true),
    ));
    assert_eq!(rejected(&spec, &config).code, "TIME_BUDGET_TOO_LOW");
}

#[test]
fn lax_bool_flags() {
    let spec = parse(&with(body(), "/constraints/allow_network", json!("false")));
    assert!(!spec.constraints.allow_network);
    one_error(
        &with(body(), "/constraints/allow_secrets", json!("maybe")),
        json!(["body", "constraints", "allow_secrets"]),
        "bool_parsing",
        "Input should be a valid boolean, unable to interpret input",
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Normalisation (5) and SPEC §9.3 / §9.5

#[test]
fn objective_is_trimmed() {
    let spec = parse(&with(body(), "/objective", json!("  Test objective with spaces  ")));
    assert_eq!(allowed(&spec, &testorg()).objective, "Test objective with spaces");
    let mut untrimmed = spec.clone();
    untrimmed.objective = "\t Built directly \n".to_owned();
    assert_eq!(allowed(&untrimmed, &testorg()).objective, "Built directly");
}

#[test]
fn ref_defaults_to_main() {
    let spec = parse(&without(body(), "/target/ref"));
    assert_eq!(allowed(&spec, &testorg()).target.git_ref, "main");
    let mut empty_ref = spec.clone();
    empty_ref.target.git_ref = String::new();
    assert_eq!(allowed(&empty_ref, &testorg()).target.git_ref, "main");
}

#[test]
fn path_defaults_to_empty() {
    let spec = parse(&without(body(), "/target/path"));
    assert_eq!(allowed(&spec, &testorg()).target.path, "");
}

#[test]
fn repo_is_normalised() {
    let spec = parse(&with(body(), "/target/repo", json!("TestOrg/Repo.git")));
    assert_eq!(spec.target.repo, "TestOrg/Repo.git", "parsing does not normalise");
    assert_eq!(allowed(&spec, &testorg()).target.repo, "testorg/repo");
}

#[test]
fn output_flags_are_false() {
    let normalised = allowed(&parse(&body()), &testorg());
    assert_eq!(
        normalised.constraints,
        Constraints { time_budget_seconds: 900, allow_network: false, allow_secrets: false }
    );
}

#[test]
fn acceptance_criteria_and_evidence_requirements_are_kept() {
    let body = with(
        with(body(), "/acceptance_criteria", json!(["Endpoint returns 200 with JSON body", "pytest passes"])),
        "/evidence_requirements",
        json!(["test_healthz.py output", "coverage report"]),
    );
    let normalised = allowed(&parse(&body), &testorg());
    assert_eq!(normalised.acceptance_criteria, ["Endpoint returns 200 with JSON body", "pytest passes"]);
    assert_eq!(normalised.evidence_requirements, ["test_healthz.py output", "coverage report"]);
}

#[test]
fn objective_blank_or_short_after_trimming_is_a_validation_error() {
    for objective in ["      ", "  abcd  ", "\u{1f}abcd\u{1f}"] {
        one_error(
            &with(body(), "/objective", json!(objective)),
            json!(["body", "objective"]),
            "string_too_short",
            "String should have at least 5 characters",
        );
    }
    assert_eq!(parse(&with(body(), "/objective", json!("  abcde  "))).objective, "abcde");
}

#[test]
fn objective_length_limits() {
    assert_eq!(parse(&with(body(), "/objective", json!("x".repeat(4000)))).objective.len(), 4000);
    let padded = format!("  {}  ", "x".repeat(4000));
    assert_eq!(parse(&with(body(), "/objective", json!(padded))).objective.len(), 4000);
    one_error(
        &with(body(), "/objective", json!("x".repeat(4001))),
        json!(["body", "objective"]),
        "string_too_long",
        "String should have at most 4000 characters",
    );
    one_error(
        &with(body(), "/objective", json!(42)),
        json!(["body", "objective"]),
        "string_type",
        "Input should be a valid string",
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Error serialisation (2) and config (2)

#[test]
fn policy_error_to_json() {
    let error = PolicyError::new("TEST_CODE", "Test message");
    assert_eq!(error.to_json(), json!({"error": "policy_violation", "code": "TEST_CODE", "message": "Test message"}));
}

#[test]
fn policy_error_display() {
    assert_eq!(PolicyError::new("TEST_CODE", "Test message").to_string(), "TEST_CODE: Test message");
}

#[test]
fn config_defaults() {
    let config = PolicyConfig::default();
    assert!(config.allowed_repo_prefixes.is_empty());
    assert_eq!(
        (config.min_time_budget_seconds, config.max_time_budget_seconds, config.default_time_budget_seconds),
        (30, 86400, 900)
    );
    assert_eq!(PolicyConfig::from_prefixes(" a/ ,b/").allowed_repo_prefixes, ["a/", "b/"]);
}

#[test]
fn config_custom_limits_kept() {
    let config = PolicyConfig { min_time_budget_seconds: 60, max_time_budget_seconds: 1800, ..Default::default() };
    assert_eq!((config.min_time_budget_seconds, config.max_time_budget_seconds), (60, 1800));
}

// ---------------------------------------------------------------------------------------------------------------
// evaluate integration (3)

#[test]
fn evaluate_returns_new_normalised_spec() {
    let spec =
        parse(&with(with(body(), "/objective", json!("  Trim me please  ")), "/target/repo", json!("TestOrg/Svc.git")));
    let normalised = allowed(&spec, &testorg());
    assert_eq!(spec.target.repo, "TestOrg/Svc.git", "the input is untouched");
    assert_eq!(normalised.objective, "Trim me please");
    assert_eq!(normalised.target.repo, "testorg/svc");
}

#[test]
fn evaluate_preserves_key_inputs_metadata() {
    let body = with(with(body(), "/inputs", json!({"file": "test.py"})), "/metadata", json!({"tags": ["test"]}));
    let normalised = allowed(&parse(&body), &testorg());
    assert_eq!(normalised.idempotency_key.as_deref(), Some("2025-12-08T14:05:00Z-devops-ctl-001"));
    assert_eq!(Value::Object(normalised.inputs), json!({"file": "test.py"}));
    assert_eq!(Value::Object(normalised.metadata), json!({"tags": ["test"]}));
}

#[test]
fn evaluate_preserves_requested_by() {
    let body = with(body(), "/requested_by", json!({"kind": "agent", "id": "jules-001", "label": "Jules Agent"}));
    let normalised = allowed(&parse(&body), &testorg());
    assert_eq!(
        normalised.requested_by,
        RequestedBy { kind: ActorKind::Agent, id: "jules-001".to_owned(), label: Some("Jules Agent".to_owned()) }
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Compatibility layer (9)

fn legacy_base() -> Value {
    json!({"requested_by": {"kind": "system", "id": "ci"}, "objective": "Legacy objective", "target": {}})
}

#[test]
fn legacy_type_becomes_operation() {
    let body = with(with(legacy_base(), "/type", json!("docs")), "/target/repo", json!("testorg/r"));
    let spec = parse(&body);
    assert_eq!(spec.operation, Operation::Docs);
    assert!(spec.to_json().get("type").is_none(), "type is cleared");
}

#[test]
fn legacy_payload_becomes_inputs() {
    let body = json!({
        "requested_by": {"kind": "human", "id": "a"}, "objective": "Do the thing", "operation": "ops",
        "target": {"repo": "testorg/r"}, "payload": {"build_id": 7}
    });
    let spec = parse(&body);
    assert_eq!(Value::Object(spec.inputs.clone()), json!({"build_id": 7}));
    assert!(spec.to_json().get("payload").is_none(), "payload is cleared");
    let with_empty_inputs = with(body, "/inputs", json!({}));
    assert_eq!(Value::Object(parse(&with_empty_inputs).inputs), json!({"build_id": 7}));
}

#[test]
fn legacy_repository_becomes_repo() {
    let body = with(with(legacy_base(), "/operation", json!("ops")), "/target/repository", json!("testorg/legacy"));
    let spec = parse(&body);
    assert_eq!(spec.target.repo, "testorg/legacy");
    assert!(spec.to_json()["target"].get("repository").is_none(), "repository is cleared");
}

#[test]
fn operation_beats_type() {
    let body = with(with(minimal("analysis", "testorg/r"), "/type", json!("docs")), "/target/repo", json!("testorg/r"));
    assert_eq!(parse(&body).operation, Operation::Analysis);
}

#[test]
fn inputs_beat_payload() {
    let body = with(with(minimal("ops", "testorg/r"), "/inputs", json!({"a": 1})), "/payload", json!({"b": 2}));
    assert_eq!(Value::Object(parse(&body).inputs), json!({"a": 1}));
}

#[test]
fn repo_beats_repository() {
    let body = with(minimal("ops", "testorg/canonical"), "/target/repository", json!("testorg/legacy"));
    assert_eq!(parse(&body).target.repo, "testorg/canonical");
}

#[test]
fn neither_operation_nor_type() {
    let body = with(legacy_base(), "/target/repo", json!("testorg/r"));
    one_error(&body, json!(["body"]), "value_error", "Value error, Either 'operation' or 'type' must be provided");
}

#[test]
fn neither_repo_nor_repository() {
    let body = with(legacy_base(), "/operation", json!("docs"));
    one_error(&body, json!(["body"]), "value_error", "Value error, Either 'repo' or 'repository' must be provided");
    // Both missing: the operation is reported first, alone.
    one_error(
        &legacy_base(),
        json!(["body"]),
        "value_error",
        "Value error, Either 'operation' or 'type' must be provided",
    );
}

#[test]
fn all_legacy_task_passes_policy() {
    let body = json!({
        "requested_by": {"kind": "human", "id": "legacy-user"},
        "objective": "Run the legacy build",
        "type": "ops",
        "target": {"repository": "testorg/test"},
        "payload": {"build_id": 123}
    });
    let normalised = allowed(&parse(&body), &testorg());
    assert_eq!(normalised.operation, Operation::Ops);
    assert_eq!(normalised.target.repo, "testorg/test");
    assert_eq!(Value::Object(normalised.inputs), json!({"build_id": 123}));
}

#[test]
fn legacy_alias_values_are_validated() {
    one_error(
        &with(with(legacy_base(), "/type", json!("deploy")), "/target/repo", json!("testorg/r")),
        json!(["body", "type"]),
        "literal_error",
        "Input should be 'code_change', 'docs', 'analysis' or 'ops'",
    );
    one_error(
        &with(with(legacy_base(), "/operation", json!("ops")), "/target/repository", json!("")),
        json!(["body", "target", "repository"]),
        "string_too_short",
        "String should have at least 1 character",
    );
    one_error(
        &with(minimal("ops", "testorg/r"), "/payload", json!([1])),
        json!(["body", "payload"]),
        "dict_type",
        "Input should be a valid dictionary",
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The union: unknown fields, strictness of the canonical model, error reporting

#[test]
fn unknown_top_level_field_is_accepted_via_legacy_and_dropped() {
    let body = with(body(), "/bogus", json!(1));
    let spec = parse(&body);
    assert_eq!(spec, parse(&super::tests::body()));
    assert!(spec.to_json().get("bogus").is_none());
}

#[test]
fn unknown_target_field_is_accepted() {
    let spec = parse(&with(body(), "/target/branch", json!("dev")));
    assert_eq!(spec.target, Target { repo: "testorg/example-service".into(), git_ref: "main".into(), path: "".into() });
}

#[test]
fn unknown_nested_keys_in_requested_by_and_constraints_are_dropped() {
    let body = with(with(body(), "/requested_by/email", json!("a@b.c")), "/constraints/gpu", json!(true));
    assert_eq!(parse(&body), parse(&super::tests::body()));
}

#[test]
fn canonical_model_forbids_unknown_fields_but_not_in_nested_free_objects() {
    let base = [LocPart::from("body")];
    let body = with(with(body(), "/bogus", json!(1)), "/target/repository", json!("x/y"));
    let body = with(body, "/requested_by/email", json!("a@b.c"));
    let errors: Vec<Value> = validate(&object(body.clone()), &base, Model::Canonical)
        .expect_err("canonical rejects")
        .iter()
        .map(|error| error.to_json())
        .collect();
    assert_eq!(
        errors,
        [
            json!({"loc": ["body", "target", "repository"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}),
            json!({"loc": ["body", "bogus"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}),
        ]
    );
    assert!(validate(&object(body), &base, Model::Legacy).is_ok());
    assert!(validate(&object(super::tests::body()), &base, Model::Canonical).is_ok());
}

#[test]
fn both_models_failing_report_legacy_errors_only() {
    let body = json!({"bogus": true, "objective": "abc", "target": {"repo": "", "ref": null}});
    assert_eq!(
        errors(&body),
        [
            json!({"loc": ["body", "requested_by"], "msg": "Field required", "type": "missing"}),
            json!({"loc": ["body", "objective"], "msg": "String should have at least 5 characters", "type": "string_too_short"}),
            json!({"loc": ["body", "target", "repo"], "msg": "String should have at least 1 character", "type": "string_too_short"}),
            json!({"loc": ["body", "target", "ref"], "msg": "Input should be a valid string", "type": "string_type"}),
        ]
    );
}

#[test]
fn empty_body_reports_required_fields() {
    assert_eq!(
        errors(&json!({})),
        [
            json!({"loc": ["body", "requested_by"], "msg": "Field required", "type": "missing"}),
            json!({"loc": ["body", "objective"], "msg": "Field required", "type": "missing"}),
            json!({"loc": ["body", "target"], "msg": "Field required", "type": "missing"}),
        ]
    );
}

#[test]
fn non_object_body_is_one_error_at_body() {
    for body in [json!([]), json!("text"), json!(null), json!(42)] {
        one_error(
            &body,
            json!(["body"]),
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
        );
    }
}

#[test]
fn version_other_than_1_0_rejected() {
    one_error(
        &with(body(), "/version", json!("2.0")),
        json!(["body", "version"]),
        "literal_error",
        "Input should be '1.0'",
    );
    one_error(
        &with(body(), "/version", json!(1.0)),
        json!(["body", "version"]),
        "literal_error",
        "Input should be '1.0'",
    );
    assert_eq!(parse(&without(body(), "/version")).version, "1.0");
}

#[test]
fn idempotency_key_limits() {
    one_error(
        &with(body(), "/idempotency_key", json!("")),
        json!(["body", "idempotency_key"]),
        "string_too_short",
        "String should have at least 1 character",
    );
    one_error(
        &with(body(), "/idempotency_key", json!("k".repeat(257))),
        json!(["body", "idempotency_key"]),
        "string_too_long",
        "String should have at most 256 characters",
    );
    assert_eq!(parse(&with(body(), "/idempotency_key", json!(null))).idempotency_key, None);
    assert_eq!(parse(&without(body(), "/idempotency_key")).idempotency_key, None);
}

#[test]
fn ref_empty_or_null_rejected() {
    one_error(
        &with(body(), "/target/ref", json!("")),
        json!(["body", "target", "ref"]),
        "string_too_short",
        "String should have at least 1 character",
    );
    one_error(
        &with(body(), "/target/ref", json!(null)),
        json!(["body", "target", "ref"]),
        "string_type",
        "Input should be a valid string",
    );
}

#[test]
fn path_null_or_too_long_rejected() {
    one_error(
        &with(body(), "/target/path", json!(null)),
        json!(["body", "target", "path"]),
        "string_type",
        "Input should be a valid string",
    );
    one_error(
        &with(body(), "/target/path", json!("p".repeat(513))),
        json!(["body", "target", "path"]),
        "string_too_long",
        "String should have at most 512 characters",
    );
}

#[test]
fn inputs_list_rejected() {
    one_error(
        &with(body(), "/inputs", json!([1, 2])),
        json!(["body", "inputs"]),
        "dict_type",
        "Input should be a valid dictionary",
    );
    one_error(
        &with(body(), "/metadata", json!(null)),
        json!(["body", "metadata"]),
        "dict_type",
        "Input should be a valid dictionary",
    );
}

#[test]
fn requested_by_checks() {
    one_error(
        &with(body(), "/requested_by/kind", json!("robot")),
        json!(["body", "requested_by", "kind"]),
        "literal_error",
        "Input should be 'human', 'agent' or 'system'",
    );
    one_error(
        &with(body(), "/requested_by/id", json!("i".repeat(129))),
        json!(["body", "requested_by", "id"]),
        "string_too_long",
        "String should have at most 128 characters",
    );
    one_error(&without(body(), "/requested_by/id"), json!(["body", "requested_by", "id"]), "missing", "Field required");
    one_error(
        &with(body(), "/requested_by", json!("alice")),
        json!(["body", "requested_by"]),
        "model_attributes_type",
        "Input should be a valid dictionary or object to extract fields from",
    );
    assert_eq!(parse(&with(body(), "/requested_by/label", json!(null))).requested_by.label, None);
}

#[test]
fn string_lists_checked_per_item() {
    one_error(
        &with(body(), "/acceptance_criteria", json!(["ok", 3])),
        json!(["body", "acceptance_criteria", 1]),
        "string_type",
        "Input should be a valid string",
    );
    one_error(
        &with(body(), "/evidence_requirements", json!("one")),
        json!(["body", "evidence_requirements"]),
        "list_type",
        "Input should be a valid list",
    );
}

#[test]
fn nul_characters_rejected_with_their_location() {
    let msg = "Value error, the NUL character (U+0000) is not allowed";
    one_error(&with(body(), "/objective", json!("Fix the\u{0} bug")), json!(["body", "objective"]), "value_error", msg);
    one_error(
        &with(body(), "/inputs", json!({"files": ["a.py", "b\u{0}.py"]})),
        json!(["body", "inputs", "files", 1]),
        "value_error",
        msg,
    );
    one_error(
        &with(body(), "/metadata", json!({"k\u{0}": 1})),
        json!(["body", "metadata", "k\u{0}"]),
        "value_error",
        msg,
    );
    one_error(&with(body(), "/bogus", json!("\u{0}")), json!(["body", "bogus"]), "value_error", msg);
}

#[test]
fn canonical_json_round_trips() {
    let body = with(with(body(), "/acceptance_criteria", json!(["a", "b"])), "/evidence_requirements", json!(["c"]));
    let spec = parse(&body);
    assert_eq!(
        spec.to_json(),
        json!({
            "version": "1.0",
            "idempotency_key": "2025-12-08T14:05:00Z-devops-ctl-001",
            "requested_by": {"kind": "human", "id": "alice", "label": "Alice Developer"},
            "objective": "Add a /healthz endpoint that returns {\"status\":\"ok\"} and a pytest that verifies 200 + body.",
            "operation": "code_change",
            "target": {"repo": "testorg/example-service", "ref": "main", "path": ""},
            "constraints": {"time_budget_seconds": 900, "allow_network": false, "allow_secrets": false},
            "inputs": {},
            "acceptance_criteria": ["a", "b"],
            "evidence_requirements": ["c"],
            "metadata": {"tags": ["stage-1", "api"]}
        })
    );
    assert_eq!(parse(&spec.to_json()), spec);
    let minimal = parse(&minimal("docs", "testorg/r"));
    assert_eq!(parse(&minimal.to_json()), minimal);
}

// ---------------------------------------------------------------------------------------------------------------
// CWOM adapter

fn fresh_ids() -> CwomIds {
    CwomIds {
        repo_id: "01JREPO0000000000000000000".to_owned(),
        constraint_snapshot_id: "01JCS000000000000000000000".to_owned(),
        issue_id: "01JISSUE000000000000000000".to_owned(),
        context_packet_id: "01JCP000000000000000000000".to_owned(),
    }
}

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().expect("valid time") + chrono::Duration::microseconds(123_456)
}

fn cwom_for(body: Value) -> TaskCwom {
    let spec = allowed(&parse(&body), &testorg());
    task_to_cwom(&spec, "trace-1", now(), fresh_ids(), None)
}

#[test]
fn adapter_full_mapping() {
    let body = json!({
        "idempotency_key": "key-1",
        "requested_by": {"kind": "human", "id": "alice", "label": "Alice"},
        "objective": "  Add healthz\nwith a test  ",
        "operation": "code_change",
        "target": {"repo": " TestOrg/Svc.git ", "ref": "dev", "path": "src"},
        "constraints": {"time_budget_seconds": 120},
        "inputs": {"file": "a.py"},
        "metadata": {"tags": ["x"]},
        "evidence_requirements": ["pytest output"]
    });
    let cwom = cwom_for(body);
    let ts = "2026-01-02T03:04:05.123456Z";
    let alice = json!({"actor_kind": "human", "actor_id": "alice", "display": "Alice"});
    assert_eq!(cwom.ids, fresh_ids());
    assert_eq!(
        cwom.ids.to_json(),
        json!({
            "repo_id": "01JREPO0000000000000000000",
            "issue_id": "01JISSUE000000000000000000",
            "context_packet_id": "01JCP000000000000000000000",
            "constraint_snapshot_id": "01JCS000000000000000000000"
        })
    );
    assert_eq!(
        cwom.repo,
        Some(json!({
            "kind": "Repo", "id": "01JREPO0000000000000000000", "trace_id": "trace-1",
            "name": "svc", "slug": "testorg/svc",
            "source": {"system": "jct", "external_id": "testorg/svc", "url": null},
            "default_branch": "dev", "visibility": "private", "owners": [], "policy": null,
            "links": [], "tags": [], "meta": {}, "created_at": ts, "updated_at": ts
        }))
    );
    assert_eq!(
        cwom.constraint_snapshot,
        json!({
            "kind": "ConstraintSnapshot", "id": "01JCS000000000000000000000", "trace_id": "trace-1",
            "scope": "run", "captured_at": ts, "owner": alice,
            "constraints": {
                "time": {"available_minutes": 2, "deadline": null},
                "energy": null, "health": null, "budget": null, "tools": null, "environment": null,
                "risk": {"tolerance": "low", "notes": "allow_network=False, allow_secrets=False"}
            },
            "tags": [],
            "meta": {"source": "jct_task", "idempotency_key": "key-1", "time_budget_seconds": 120,
                     "allow_network": false, "allow_secrets": false}
        })
    );
    assert_eq!(
        cwom.issue,
        json!({
            "kind": "Issue", "id": "01JISSUE000000000000000000", "trace_id": "trace-1",
            "repo": {"kind": "Repo", "id": "01JREPO0000000000000000000", "role": null},
            "title": "Add healthz", "description": "Add healthz\nwith a test",
            "type": "feature", "priority": "P2", "status": "planned",
            "assignees": [alice], "watchers": [], "doctrine_refs": [],
            "constraints": [{"kind": "ConstraintSnapshot", "id": "01JCS000000000000000000000"}],
            "context_packets": [{"kind": "ContextPacket", "id": "01JCP000000000000000000000"}],
            "acceptance": {"criteria": ["Add healthz\nwith a test"], "tests_expected": null},
            "relationships": {"parent": null, "blocks": [], "blocked_by": [], "duplicates": []},
            "runs": [], "tags": [],
            "meta": {"source": "jct_task", "idempotency_key": "key-1", "task_metadata": {"tags": ["x"]},
                     "evidence_requirements": ["pytest output"]},
            "created_at": ts, "updated_at": ts
        })
    );
    assert_eq!(
        cwom.context_packet,
        json!({
            "kind": "ContextPacket", "id": "01JCP000000000000000000000", "trace_id": "trace-1",
            "for_issue": {"kind": "Issue", "id": "01JISSUE000000000000000000", "role": null},
            "version": "1.0", "summary": "Initial context from JCT task",
            "inputs": {"documents": [], "data_blobs": [], "links": []},
            "assumptions": ["Target branch: dev", "Working path: src"],
            "open_questions": [], "instructions": "Add healthz\nwith a test",
            "doctrine_refs": [],
            "constraint_snapshot": {"kind": "ConstraintSnapshot", "id": "01JCS000000000000000000000"},
            "tags": [],
            "meta": {"source": "jct_task", "idempotency_key": "key-1",
                     "acceptance_criteria": ["Add healthz\nwith a test"],
                     "evidence_requirements": ["pytest output"],
                     "task_ref": "dev", "task_path": "src", "task_inputs": {"file": "a.py"}},
            "created_at": ts, "updated_at": ts
        })
    );
}

#[test]
fn adapter_reuses_existing_repo() {
    let spec = allowed(&parse(&body()), &testorg());
    let cwom = task_to_cwom(&spec, "t", now(), fresh_ids(), Some("01JEXISTING000000000000000"));
    assert_eq!(cwom.repo, None);
    assert_eq!(cwom.ids.repo_id, "01JEXISTING000000000000000");
    assert_eq!(cwom.ids.issue_id, fresh_ids().issue_id);
    assert_eq!(cwom.issue["repo"], json!({"kind": "Repo", "id": "01JEXISTING000000000000000", "role": null}));
}

#[test]
fn adapter_available_minutes_is_integer_division() {
    for (seconds, minutes) in [(120, 2), (30, 0), (900, 15), (119, 1), (86400, 1440)] {
        let cwom = cwom_for(with(body(), "/constraints/time_budget_seconds", json!(seconds)));
        assert_eq!(cwom.constraint_snapshot["constraints"]["time"]["available_minutes"], json!(minutes), "{seconds}s");
        assert_eq!(cwom.constraint_snapshot["meta"]["time_budget_seconds"], json!(seconds));
    }
}

#[test]
fn adapter_issue_types() {
    for (operation, issue_type) in
        [("code_change", "feature"), ("docs", "doc"), ("analysis", "research"), ("ops", "ops")]
    {
        let cwom = cwom_for(minimal(operation, "testorg/r"));
        assert_eq!(cwom.issue["type"], json!(issue_type), "{operation}");
    }
}

#[test]
fn adapter_titles() {
    let long = "é".repeat(250);
    let cwom = cwom_for(with(body(), "/objective", json!(format!("{long}\nsecond line"))));
    assert_eq!(cwom.issue["title"], json!("é".repeat(200)));
    let cwom = cwom_for(with(body(), "/objective", json!("First line\r\nSecond line")));
    assert_eq!(cwom.issue["title"], json!("First line"));
    assert_eq!(cwom.issue["description"], json!("First line\r\nSecond line"));
    let cwom = cwom_for(with(body(), "/objective", json!("Single line objective")));
    assert_eq!(cwom.issue["title"], json!("Single line objective"));

    // Only reachable with a spec built directly (a parsed objective is never blank).
    let mut spec = allowed(&parse(&body()), &testorg());
    spec.objective = "\n\nBody after blank lines".to_owned();
    let cwom = task_to_cwom(&spec, "t", now(), fresh_ids(), None);
    assert_eq!(cwom.issue["title"], json!("Untitled Task"));
}

#[test]
fn adapter_acceptance_criteria_given() {
    let cwom = cwom_for(with(body(), "/acceptance_criteria", json!(["Returns 200", "Has a test"])));
    assert_eq!(cwom.issue["acceptance"]["criteria"], json!(["Returns 200", "Has a test"]));
    assert_eq!(cwom.context_packet["meta"]["acceptance_criteria"], json!(["Returns 200", "Has a test"]));
}

#[test]
fn adapter_root_path_null_key_and_repo_name() {
    let cwom = cwom_for(without(without(body(), "/target/path"), "/idempotency_key"));
    assert_eq!(cwom.context_packet["assumptions"], json!(["Target branch: main", "Working path: (root)"]));
    assert_eq!(cwom.context_packet["meta"]["task_path"], json!(""));
    assert_eq!(cwom.issue["meta"]["idempotency_key"], json!(null));
    assert_eq!(cwom.constraint_snapshot["meta"]["idempotency_key"], json!(null));
    let repo = cwom.repo.expect("new repo");
    assert_eq!((&repo["name"], &repo["slug"]), (&json!("example-service"), &json!("testorg/example-service")));

    let mut spec = allowed(&parse(&body()), &testorg());
    spec.target.repo = "testorg/".to_owned();
    spec.target.git_ref = "b".repeat(200);
    let repo = task_to_cwom(&spec, "t", now(), fresh_ids(), None).repo.expect("new repo");
    assert_eq!(repo["name"], json!("testorg/"));
    assert_eq!(repo["default_branch"], json!("b".repeat(128)));
}

#[test]
fn adapter_owner_without_label_and_risk_tolerance() {
    let mut spec = allowed(&parse(&minimal("ops", "testorg/r")), &testorg());
    let cwom = task_to_cwom(&spec, "t", now(), fresh_ids(), None);
    assert_eq!(
        cwom.constraint_snapshot["owner"],
        json!({"actor_kind": "human", "actor_id": "tester", "display": null})
    );
    // The flags are always false after the gate; the mapping itself still follows the original.
    spec.constraints.allow_network = true;
    let cwom = task_to_cwom(&spec, "t", now(), fresh_ids(), None);
    assert_eq!(
        cwom.constraint_snapshot["constraints"]["risk"],
        json!({"tolerance": "medium", "notes": "allow_network=True, allow_secrets=False"})
    );
    spec.constraints.allow_secrets = true;
    let cwom = task_to_cwom(&spec, "t", now(), fresh_ids(), None);
    assert_eq!(cwom.constraint_snapshot["constraints"]["risk"]["tolerance"], json!("high"));
}
