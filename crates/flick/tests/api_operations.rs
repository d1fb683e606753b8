//! The client's operation table matches Firecracker's spec exactly: a new endpoint in the spec
//! without a typed method, or a method for an endpoint the spec does not have, fails here.

use std::collections::BTreeSet;

use flick::api::OPERATIONS;
use flick_testkit::spec::Spec;

#[test]
fn every_spec_operation_has_exactly_one_typed_method() {
    let spec = Spec::bundled();
    let from_spec: BTreeSet<(String, String)> = spec.operations().into_iter().collect();
    let from_client: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p, _)| ((*m).to_string(), (*p).to_string()))
        .collect();
    let missing: Vec<_> = from_spec.difference(&from_client).collect();
    let extra: Vec<_> = from_client.difference(&from_spec).collect();
    assert!(
        missing.is_empty(),
        "spec operations without a typed method: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "typed methods for operations the spec lacks: {extra:?}"
    );
    assert_eq!(OPERATIONS.len(), from_spec.len());
}

#[test]
fn the_comparison_detects_a_missing_operation() {
    // Prove the check above can fail: drop one entry and compare again.
    let spec = Spec::bundled();
    let from_spec: BTreeSet<(String, String)> = spec.operations().into_iter().collect();
    let partial: BTreeSet<(String, String)> = OPERATIONS[1..]
        .iter()
        .map(|(m, p, _)| ((*m).to_string(), (*p).to_string()))
        .collect();
    assert_eq!(from_spec.difference(&partial).count(), 1);
}
