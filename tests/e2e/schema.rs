//! `schema.graphql` is the contract portals code against: it must be exactly what the code
//! exports. Regenerate with `cargo run -q -- schema > /tmp/s.graphql && mv /tmp/s.graphql schema.graphql`.

#[test]
fn schema_graphql_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql is missing; run `cargo run -q -- schema > /tmp/s.graphql && mv /tmp/s.graphql schema.graphql`");
    let exported = api::graphql::sdl();
    assert!(
        committed == exported,
        "schema.graphql is out of date; run `cargo run -q -- schema > /tmp/s.graphql && mv /tmp/s.graphql schema.graphql`\n--- exported ---\n{exported}"
    );
}
