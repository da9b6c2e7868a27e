//! The shutdown drain: its sequence on paused time, and a real axum server.

mod e2e;
mod sequence;
