//! tollgate benches. `cargo bench --bench tollgate` runs them all;
//! `cargo bench --bench tollgate -- auth` runs one group.

use criterion::{criterion_group, criterion_main};

mod auth;
mod rate_limit;

criterion_group!(benches, auth::bench, rate_limit::bench);
criterion_main!(benches);
