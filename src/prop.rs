//! Settings shared by the property tests (`mod properties` at the end of the modules they test).

use proptest::prelude::ProptestConfig;

/// 10,000 generated cases per property, the same in CI as here (set in code, so no environment
/// is needed). Nothing is written into the source tree: a failure found becomes a named
/// regression test beside the property instead of a `proptest-regressions` file.
pub fn config() -> ProptestConfig {
    ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() }
}
