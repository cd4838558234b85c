//! Instruction-count budgets per request, counted by callgrind (through
//! gungraun), so that a regression of a few percent fails CI on any machine:
//! counts do not depend on the machine's load, wall-clock times do.
//!
//! ```sh
//! cargo install --locked gungraun-runner@0.20.0   # once; .ci/run does it
//! cargo bench --bench budgets                     # every path, checked
//! ```
//!
//! Each case is one request through a warmed service (built and warmed
//! before the count starts, so only the request is counted): building the
//! request, the layers, the inner service and dropping the response. The
//! budgets live in `benches/budgets.txt`; a case fails when it exceeds its
//! budget by more than its margin (`benches/support/budgets.rs`). The `bare` cases are the same
//! request through the inner service alone: what a layer adds is the
//! difference. tower_governor's cases are counted for comparison, without a
//! budget of their own.
//!
//! Allocation budgets are checked by `benches/allocations.rs` (dhat), which
//! reads the same file.

// gungraun's macros generate undocumented modules and items.
#![allow(missing_docs)]

use gungraun::{
    Callgrind, EventKind, LibraryBenchmarkConfig, library_benchmark, library_benchmark_group, main,
};

#[path = "support/budgets.rs"]
#[allow(dead_code)]
mod budgets;
#[path = "support/cases.rs"]
#[allow(dead_code)]
mod cases;
#[path = "support/example_app.rs"]
mod example_app;
#[path = "tollgate/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

use cases::*;

/// Ends a case without counting its teardown: dropping the service, its
/// key table and runtime is not part of a request (the process ends next).
fn forget(case: Case) {
    std::mem::forget(case);
}

/// The configuration of the case `name`: its instruction budget, when it has
/// one, as a hard limit.
fn budget(name: &str) -> LibraryBenchmarkConfig {
    let mut config = LibraryBenchmarkConfig::default();
    // REDIS_URL reaches the local-first case.
    config.env_clear(false);
    let mut callgrind = Callgrind::default();
    let line = budgets::budget(name)
        .unwrap_or_else(|| panic!("benches/budgets.txt has no line for the case {name}"));
    if let Some(budget) = line.instructions {
        callgrind.hard_limits([(EventKind::Ir, budgets::instruction_limit(budget))]);
    }
    config.tool(callgrind);
    config
}

#[library_benchmark]
#[bench::auth_bare(args = (auth_bare()), config = budget("auth_bare"))]
#[bench::auth_cache_hit(args = (auth_cache_hit()), config = budget("auth_cache_hit"))]
#[bench::auth_hs256_uncached(args = (auth_hs256_uncached()), config = budget("auth_hs256_uncached"))]
#[bench::auth_es256_uncached(args = (auth_es256_uncached()), config = budget("auth_es256_uncached"))]
#[bench::jsonwebtoken_decode_hs256(args = (jsonwebtoken_decode_hs256()), config = budget("jsonwebtoken_decode_hs256"))]
#[bench::stack_cache_hit(args = (stack_cache_hit()), config = budget("stack_cache_hit"))]
#[bench::routes_stack_cache_hit(args = (routes_stack_cache_hit()), config = budget("routes_stack_cache_hit"))]
fn auth(mut case: Case) {
    case();
    forget(case);
}

#[library_benchmark]
#[bench::limit_bare(args = (limit_bare()), config = budget("limit_bare"))]
#[bench::limit_ietf_headers(args = (limit_ietf_headers()), config = budget("limit_ietf_headers"))]
#[bench::limit_no_headers(args = (limit_no_headers()), config = budget("limit_no_headers"))]
#[bench::tower_governor_no_headers(args = (tower_governor_no_headers()), config = budget("tower_governor_no_headers"))]
#[bench::tower_governor_headers(args = (tower_governor_headers()), config = budget("tower_governor_headers"))]
#[bench::redis_local_first(args = (redis_local_first()), config = budget("redis_local_first"))]
#[bench::lockout_pass(args = (lockout_pass()), config = budget("lockout_pass"))]
#[bench::concurrency_pass(args = (concurrency_pass()), config = budget("concurrency_pass"))]
#[bench::cost_charged(args = (cost_charged()), config = budget("cost_charged"))]
fn rate_limit(mut case: Case) {
    case();
    forget(case);
}

#[library_benchmark]
#[bench::example_layers_off(args = (example_layers_off()), config = budget("example_layers_off"))]
#[bench::example_layers_on(args = (example_layers_on()), config = budget("example_layers_on"))]
fn example_stack(mut case: Case) {
    case();
    forget(case);
}

library_benchmark_group!(name = paths; benchmarks = auth, rate_limit, example_stack);

main!(library_benchmark_groups = paths);
