//! Org structure shared by the structural ops (parse_headlines, tangle_plan, validate,
//! check_upgrade) and the element tree (`tree`, the `parse` export). Everything here is linear time, allocation-light and non-recursive:
//! hostile documents (deep nesting, unclosed openers, megabyte lines) cannot hang or
//! overflow the stack.
pub mod scan;
pub mod timestamp;
pub mod outline;
pub mod header_args;
pub mod srcblock;
pub mod cron;
pub mod plan;
pub mod elements_index;
pub mod lists;
pub mod tree;

#[cfg(test)]
mod fuzz;
