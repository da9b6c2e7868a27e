//! Integration tests of the circuit breaker layer.

mod axum_shared;
mod mock;
mod model;
mod stress;
