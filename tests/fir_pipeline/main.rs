//! The seed's failure scenarios against the real demo binary, real sockets
//! and a real MariaDB server: each scenario prints the downtime it measured.

mod database;
mod gate;
mod restart;
mod support;
mod upstreams;
