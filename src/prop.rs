//! Settings shared by the property tests (`mod properties` at the end of the modules they test).

use proptest::prelude::ProptestConfig;

/// 10,000 generated cases per property, the same in CI as here (set in code, so no environment
/// is needed). Nothing is written into the source tree: a failure found becomes a named
/// regression test beside the property instead of a `proptest-regressions` file.
pub fn config() -> ProptestConfig {
    ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() }
}

/// `text` with one byte changed to `c` (or, when it is `c` already, to another), `c` inserted,
/// or one byte removed, at `at` (`how` picks which, modulo 3): the edits the "a modified value
/// is never accepted" properties try.
pub fn mutate(text: &str, at: proptest::sample::Index, c: u8, how: u8) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let i = at.index(bytes.len());
    match how % 3 {
        0 if bytes[i] != c => bytes[i] = c,
        0 => bytes[i] = if c == b'A' { b'B' } else { b'A' },
        1 => bytes.insert(i, c),
        _ => drop(bytes.remove(i)),
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
