//! The CPU a DPoP-bound call adds: one proof per upstream call (RFC 9449 §7), signed with the
//! session's P-256 key. `cargo bench --bench dpop`; results in docs/BENCHMARKS.md.

use std::hint::black_box;

use bff::dpop::{DpopKey, access_token_hash};
use criterion::{Criterion, criterion_group, criterion_main};

fn proofs(c: &mut Criterion) {
    let Ok(key) = DpopKey::generate() else { return };
    // A typical JWT access token is about a kilobyte; its hash is computed once per token.
    let ath = access_token_hash(&"a".repeat(1000));
    let url = "https://orders.internal.example/v1/orders/7?expand=lines";
    c.bench_function("dpop_proof_per_call", |b| {
        b.iter(|| key.proof(black_box("GET"), black_box(url), Some(&ath), Some("nonce-from-the-api"), 1_764_000_000))
    });
    c.bench_function("dpop_ath_per_token", |b| b.iter(|| access_token_hash(black_box(&ath))));
}

criterion_group!(benches, proofs);
criterion_main!(benches);
