//! The per-request budgets of `benches/budgets.txt`, shared by the
//! instruction-count bench (`benches/budgets.rs`) and the allocation bench
//! (`benches/allocations.rs`).

/// One path's budgets; `None` where the path has none (a peer's layer,
/// counted for comparison).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub instructions: Option<u64>,
    pub allocations: Option<u64>,
}

const TABLE: &str = include_str!("../budgets.txt");

/// The budgets of `path`, if the table lists it.
pub fn budget(path: &str) -> Option<Budget> {
    TABLE
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.next()? != path {
                return None;
            }
            let mut next = || match fields.next() {
                Some("-") | None => None,
                Some(n) => Some(n.replace('_', "").parse().unwrap_or_else(|_| {
                    panic!("benches/budgets.txt: `{n}` in the line of {path} is not a count")
                })),
            };
            Some(Budget {
                instructions: next(),
                allocations: next(),
            })
        })
}

/// The count above which a path with `budget` instructions fails: 2 % and
/// 64 instructions over it. Counts are exact for one binary, but a change
/// elsewhere in the crate moves inlining and layout of shared code (a peer's
/// layer, untouched, moved by 1.6 % across one such change).
pub fn instruction_limit(budget: u64) -> u64 {
    budget + budget.div_ceil(50) + 64
}
