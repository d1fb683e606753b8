//! Placeholder until the API client exists.
fn main() {}
