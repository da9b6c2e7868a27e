//! Recovery rules on paused tokio time, one test per rule.

mod http_e2e;
mod regressions;
mod rules;
