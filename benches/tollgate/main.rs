//! tollgate benches. `cargo bench --bench tollgate` runs them all;
//! `cargo bench --bench tollgate -- auth` runs one group (`auth`,
//! `rate_limit`, `proxy_hop`).

use criterion::{criterion_group, criterion_main};

mod auth;
mod proxy_hop;
mod rate_limit;

/// Whether the command line's filter (if any) can select benches of `group`,
/// so that expensive set-up (servers, a million keys) runs only when needed.
pub fn selected(group: &str) -> bool {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .all(|filter| group.contains(filter.as_str()) || filter.starts_with(group))
}

criterion_group!(benches, auth::bench, rate_limit::bench, proxy_hop::bench);
criterion_main!(benches);
