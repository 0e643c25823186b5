//! The checked-in spec is what the code generates.

#[test]
fn checked_in_spec_is_current() {
    // include_str! tracks the file's content; a path from env!("CARGO_MANIFEST_DIR") would be the
    // one of whichever clone first built this binary in the shared target dir.
    let file = include_str!("../openapi/openapi.json");
    let generated = snowgate::openapi_json();
    assert!(
        file == generated,
        "openapi/openapi.json is stale; regenerate it with `cargo run -- openapi > openapi/openapi.json`"
    );
    let spec: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for path in
        ["/v1/tables/{table}/batches", "/v1/batches/{id}", "/v1/batches/{id}/rejects", "/v1/tables/{table}", "/readyz"]
    {
        assert!(spec["paths"][path].is_object(), "{path} missing from the spec");
    }
}
