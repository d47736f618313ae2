//! The committed spec in `openapi/` is generated from the code: this test regenerates it, rewrites the file
//! when it differs, and fails, so a stale spec never lands (run `cargo test` and commit the result).

use std::path::PathBuf;

#[test]
fn the_committed_openapi_spec_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.yaml");
    let generated = api::openapi_service().spec_yaml();
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        std::fs::write(&path, &generated).expect("write openapi/openapi.yaml");
        panic!("openapi/openapi.yaml was stale and has been regenerated; review and commit it");
    }
}

#[test]
fn every_operation_has_an_operation_id_and_a_summary() {
    let spec: serde_json::Value = serde_json::from_str(&api::openapi_service().spec()).unwrap();
    let mut n_operations = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            n_operations += 1;
            assert!(operation["operationId"].is_string(), "{method} {path} has no operationId");
            assert!(
                operation["summary"].is_string() || operation["description"].is_string(),
                "{method} {path} is undocumented"
            );
        }
    }
    assert!(n_operations >= 7);
}

/// `error::internal` answers 503 with `Retry-After` from any operation whose database work fails because the database
/// is unavailable; clients generated from the spec should know. The operations that never touch the database do not
/// declare it.
#[test]
fn every_operation_that_uses_the_database_declares_its_503_with_retry_after() {
    let spec: serde_json::Value = serde_json::from_str(&api::openapi_service().spec()).unwrap();
    // Liveness, readiness (which reports the database down rather than failing), the version, and the always-405
    // changes of immutable objects.
    let without_the_database = [
        "health",
        "healthz",
        "version",
        "replaceContextPacket",
        "patchContextPacket",
        "replaceConstraintSnapshot",
        "patchConstraintSnapshot",
    ];
    let mut declared = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            let unavailable = &operation["responses"]["503"];
            if without_the_database.contains(&id) {
                assert!(unavailable.is_null(), "{method} {path} ({id}) never uses the database but declares a 503");
                continue;
            }
            declared += 1;
            assert!(unavailable.is_object(), "{method} {path} ({id}) uses the database and declares no 503");
            assert!(
                unavailable["headers"]
                    .as_object()
                    .is_some_and(|headers| headers.keys().any(|name| name.eq_ignore_ascii_case("retry-after"))),
                "{method} {path} ({id}): no Retry-After on its 503: {unavailable}"
            );
            assert!(
                unavailable["description"].as_str().is_some_and(|text| text.contains("Retry-After")),
                "{method} {path} ({id}): {unavailable}"
            );
            assert_eq!(
                unavailable["content"]["application/json; charset=utf-8"]["schema"]["$ref"],
                "#/components/schemas/ErrorDetail",
                "{method} {path} ({id}): {unavailable}"
            );
        }
    }
    assert!(declared >= 30, "{declared}");
}
