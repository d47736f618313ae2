//! The `jct` binary.
fn main() {}
