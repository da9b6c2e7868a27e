//! The admin router through `Router::oneshot`: every route and status, the
//! JSON shape field by field, the auth matrix, redaction, and a property test.

mod control;
mod fuzz;
mod routes;
mod support;
