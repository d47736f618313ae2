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
