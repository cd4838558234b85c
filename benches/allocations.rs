//! Heap allocations per request on each budgeted path (`benches/budgets.txt`),
//! counted by dhat's allocator over 10,000 requests (in its own bench binary:
//! counting slows every allocation, so the timing benches never run under
//! it). Exits with an error when a path allocates more than its budget.
//!
//! `cargo bench --bench allocations [NAME...]`

use std::process::ExitCode;

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

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const REQUESTS: u64 = 10_000;

/// Allocations per request above a budget that are taken for one-offs
/// (at most 100 in `REQUESTS`), not for an allocation of every request.
const ONE_OFF: f64 = 0.01;

/// Allocations per request of a warmed case.
fn per_request(case: &mut cases::Case) -> f64 {
    let before = dhat::HeapStats::get().total_blocks;
    for _ in 0..REQUESTS {
        case();
    }
    (dhat::HeapStats::get().total_blocks - before) as f64 / REQUESTS as f64
}

fn main() -> ExitCode {
    let _profiler = dhat::Profiler::builder().testing().build();
    // `cargo bench` passes `--bench`; anything else names cases.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mut over = Vec::new();
    for (name, make) in cases::ALL {
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let budget = budgets::budget(name)
            .unwrap_or_else(|| panic!("benches/budgets.txt has no line for the case {name}"))
            .allocations;
        // The Redis case has a sync task on another thread, whose
        // allocations this global count would add: it has no budget here.
        if budget.is_none() && *name == "redis_local_first" {
            continue;
        }
        let mut case = make();
        let n = per_request(&mut case);
        // Teardown is not a request.
        std::mem::forget(case);
        match budget {
            // One-off allocations (a table growing, a clean-up step) are
            // not the request's: a path fails at a hundredth of an
            // allocation per request over its budget.
            Some(budget) if n > budget as f64 + ONE_OFF => {
                println!("allocations/{name}: {n:.4} per request, OVER its budget of {budget}");
                over.push(*name);
            }
            Some(budget) => println!("allocations/{name}: {n:.2} per request (budget {budget})"),
            None => println!("allocations/{name}: {n:.2} per request (no budget)"),
        }
    }
    if over.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "allocation budgets exceeded: {} (benches/budgets.txt)",
            over.join(", ")
        );
        ExitCode::FAILURE
    }
}
