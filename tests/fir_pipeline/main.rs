//! The seed's failure scenarios against the real demo binary, real sockets
//! and a real MariaDB server: each scenario prints the downtime it measured.

mod database;
mod restart;
mod support;
mod upstreams;
