//! tollgate benches. `cargo bench --bench tollgate` runs them all;
//! `cargo bench --bench tollgate -- auth` runs one group (`auth`,
//! `rate_limit`, `fast_path`, `peers`, `example`, `multicore`, `redis`, `proxy_hop`).

use criterion::{criterion_group, criterion_main};

mod auth;
mod example;
mod fast_path;
mod fixtures;
mod multicore;
mod peers;
mod proxy_hop;
mod rate_limit;
mod redis_store;

/// Whether the command line's filter (if any) can select benches of `group`,
/// so that expensive set-up (servers, a million keys) runs only when needed.
pub fn selected(group: &str) -> bool {
    // criterion options that take a value; anything else positional is the filter
    const WITH_VALUE: &[&str] = &[
        "--profile-time",
        "--measurement-time",
        "--warm-up-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--color",
        "--output-format",
        "--plotting-backend",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--format",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            // A regex; alternatives are checked one by one.
            return arg.split('|').any(|alt| {
                let alt = alt.trim_start_matches('^').trim_start_matches('(');
                group.contains(alt) || alt.starts_with(group)
            });
        }
    }
    true
}

criterion_group!(
    benches,
    auth::bench,
    rate_limit::bench,
    fast_path::bench,
    peers::bench,
    example::bench,
    multicore::bench,
    redis_store::bench,
    proxy_hop::bench
);
criterion_main!(benches);
