//! Database errors from [sqlx]: the dependency's failures apart from the
//! caller's mistakes.
//!
//! # Why
//!
//! With [`ErrorsAsFailures`](super::ErrorsAsFailures) every `Err` counts, so
//! a request that breaks a unique key, or a text too long for its column,
//! counts against the database as if it were down: enough of them open the
//! breaker or start a recovery, and every other caller is refused because
//! of one caller's bad input. [`SqlxErrorsAsFailures`] counts only what a
//! healthy database would not have answered, and
//! [`is_dependency_failure`] gives the same answer to code of yours (a
//! health check, a recovery action, an error response).
//!
//! ```
//! use tower_recovery::classify::{Classify, Outcome};
//! use tower_recovery::classify::sqlx::{SqlxErrorsAsFailures, is_dependency_failure};
//!
//! let classify = SqlxErrorsAsFailures::new();
//! let down: Result<(), sqlx::Error> = Err(sqlx::Error::PoolTimedOut);
//! assert_eq!(classify.classify(&down), Outcome::Failure);
//!
//! let missing: Result<(), sqlx::Error> = Err(sqlx::Error::RowNotFound);
//! assert_eq!(classify.classify(&missing), Outcome::Success);
//! assert!(!is_dependency_failure(&sqlx::Error::RowNotFound));
//! ```
//!
//! With a breaker ([`Breaker::call_with`]) or a recovery without one
//! ([`Recovery::call_with`]): the same key inserted twice is the caller's
//! error, answered by a healthy database, and trips nothing.
//!
//! ```
//! # #[cfg(feature = "recovery")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower_recovery::circuit_breaker::{Breaker, State};
//! use tower_recovery::classify::sqlx::SqlxErrorsAsFailures;
//! use tower_recovery::recovery::{Recovery, RecoveryState};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
//! sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)")
//!     .execute(&pool).await.unwrap();
//!
//! let classify = SqlxErrorsAsFailures::new();
//! let breaker = Breaker::builder("database").consecutive_failures(1).build();
//! let recovery = Recovery::builder("database", || async { Ok::<_, String>(()) })
//!     .trigger_after(1)
//!     .spawn();
//! for _ in 0..3 {
//!     let insert = sqlx::query("INSERT INTO t (id) VALUES (1)").execute(&pool);
//!     let _ = breaker.call_with(&classify, recovery.call_with(&classify, insert)).await;
//! }
//! assert_eq!(breaker.state(), State::Closed);
//! assert_eq!(recovery.status().state, RecoveryState::Idle);
//! # }
//! # #[cfg(not(feature = "recovery"))] fn main() {}
//! ```
//!
//! [`Breaker::call_with`]: crate::circuit_breaker::Breaker::call_with
//! [`Recovery::call_with`]: crate::recovery::Recovery::call_with
//!
//! # Which errors are the dependency's
//!
//! The question asked of each error: would the same call, made again
//! against a healthy database, succeed? If so, the database (or the way to
//! it) failed; if not, the call itself is at fault.
//!
//! | `sqlx::Error` | outcome |
//! |---|---|
//! | `Io`, `Tls`, `Protocol`, `PoolTimedOut`, `WorkerCrashed`, `BeginFailed` | failure: the database or the connection to it |
//! | `Configuration`, `Migrate`, variants added by later sqlx versions | failure: every call fails until someone acts, and an open breaker and an alert say so |
//! | `Database` (see below) | failure or the caller's |
//! | `RowNotFound`, `ColumnNotFound`, `ColumnIndexOutOfBounds`, `ColumnDecode`, `Decode`, `TypeNotFound` | the caller's: the database answered |
//! | `Encode`, `InvalidArgument`, `InvalidSavePointStatement`, `AnyDriverError`, `PoolClosed` | [`Outcome::Ignore`]: nothing reached the database (a closed pool is this process shutting down, not an outage) |
//!
//! A `Database` error is the database's answer. It is a failure when its
//! SQLSTATE (or MySQL/MariaDB error number, or SQLite result code) says the
//! server cannot serve anyone right now:
//!
//! - SQLSTATE class `08` (connection exception: MariaDB `1040` too many
//!   connections, `1053` server shutdown, `1043`, `1152`-`1161` network
//!   errors), `28` (authorization: `1045` access denied), `53`
//!   (insufficient resources: disk full, out of memory, PostgreSQL's too
//!   many connections), `57` (operator intervention: PostgreSQL's
//!   `57P01` admin shutdown, `57P02`, `57P03` cannot connect now, `57014`
//!   statement timeout), `58` (system error), `XX` (internal error),
//!   `HY001` (out of memory), `HYT00`/`HYT01` (timeouts), `3D000` (the
//!   database does not exist), `25006` (read-only: a standby after a
//!   failover), `40003` (commit outcome unknown), `55P03` (lock timeout),
//!   `70100` (MariaDB: connection killed, `max_statement_time` exceeded);
//! - MySQL/MariaDB numbers whose SQLSTATE is the catch-all `HY000` or
//!   `42000`: `1021` disk full, `1030` storage engine error, `1037`/`1038`
//!   out of memory, `1041` out of resources, `1044` database access denied,
//!   `1049` unknown database, `1105` unknown error, `1114` table full,
//!   `1129` host blocked, `1130` host not allowed, `1135` cannot create a
//!   thread, `1180`/`1181` error during commit/rollback, `1203`/`1226`
//!   too many connections for the user, `1205` lock wait timeout, `1290`
//!   and `1836` read-only, `1317` query interrupted, `1637` too many
//!   transactions, `1927` connection killed, `1969` statement timeout,
//!   `3024` query timeout, `4031` disconnected for inactivity (and the
//!   client codes `2002`, `2003`, `2006`, `2013`, `2055`, which sqlx's own
//!   driver reports as `Io` instead);
//! - SQLite result codes `SQLITE_PERM`, `SQLITE_BUSY` (the busy timeout
//!   elapsed), `SQLITE_NOMEM`, `SQLITE_READONLY`, `SQLITE_IOERR`,
//!   `SQLITE_CORRUPT`, `SQLITE_FULL`, `SQLITE_CANTOPEN`, `SQLITE_PROTOCOL`,
//!   `SQLITE_NOTADB`.
//!
//! Every other database error is the caller's: constraint violations
//! (unique, foreign key, not null, check: SQLSTATE class `23`, SQLite's
//! `SQLITE_CONSTRAINT`), data too long (`22001`, MariaDB `1406`), other
//! data exceptions (class `22`), syntax and access rule errors (`42000`,
//! MariaDB `1064`, SQLite's `SQLITE_ERROR`), an unknown table or column,
//! a packet larger than `max_allowed_packet` (`1153`), a write in a
//! transaction the caller opened read-only (`1792`), SQLite's
//! `SQLITE_TOOBIG`, and so on.
//!
//! **Timeouts are failures, conflicts are not.** A lock wait that times
//! out (`1205`, `55P03`, `SQLITE_BUSY`) or a statement cancelled by the
//! server's timeout is the database not answering in time, the same as a
//! hung dependency: many of them mean something holds locks or the server
//! is saturated. A deadlock or serialization failure (`1213`, `40001`,
//! `40P01`) is an immediate, definite answer from a healthy database that
//! chose one transaction to abort: the caller retries the transaction, and
//! the breaker stays out of it.
//!
//! # The caller's errors count as successes
//!
//! A constraint violation proves the database is up: it parsed the
//! statement, checked the constraint and answered. So, by default, the
//! caller's errors are recorded as [`Outcome::Success`], like a `4xx` for
//! [`HttpErrorsAsFailures`](super::HttpErrorsAsFailures) and like
//! Resilience4j, which counts an exception that is neither recorded nor
//! ignored as a success. A half-open probe that meets one closes the
//! breaker (the database answered), and a failure rate is the share of
//! calls the database failed, not of the calls that went wrong.
//! [`SqlxErrorsAsFailures::caller_errors`] records them as
//! [`Outcome::Ignore`] instead (Resilience4j's `ignoreExceptions`) for those
//! who want only clean successes to close a breaker.
//!
//! # How the codes are read
//!
//! Without compiling any sqlx driver: the SQLSTATE comes from
//! [`DatabaseError::code`]; the MySQL/MariaDB error number and the SQLite
//! result code from the start of the driver's message (`1406 (22001): ...`,
//! `(code: 2067) ...`), read into a small buffer on the stack. Nothing
//! allocates (SQLite's `code()`, which formats a `String`, is not called).
//! If a later sqlx changes those messages, errors fall back to their
//! SQLSTATE and kind.
//!
//! [sqlx]: https://docs.rs/sqlx

use std::fmt::{self, Write as _};

use ::sqlx::error::{DatabaseError, ErrorKind};

use super::{Classify, Outcome};

/// Classifies sqlx results: the database's failures are failures, the
/// caller's errors successes (configurable), and errors raised before
/// anything reached the database are not counted. See the
/// [module docs](self) for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlxErrorsAsFailures {
    caller_errors: Outcome,
}

impl Default for SqlxErrorsAsFailures {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlxErrorsAsFailures {
    /// The classifier: the caller's errors count as successes.
    pub const fn new() -> Self {
        Self {
            caller_errors: Outcome::Success,
        }
    }

    /// Records the caller's errors (a constraint violation, data too long,
    /// a syntax error, no row) as `outcome`: [`Outcome::Success`] (the
    /// default: the database answered) or [`Outcome::Ignore`] (not counted
    /// at all). [`Outcome::Failure`] gives back [`ErrorsAsFailures`]'s
    /// behaviour for these errors.
    ///
    /// [`ErrorsAsFailures`]: super::ErrorsAsFailures
    pub const fn caller_errors(mut self, outcome: Outcome) -> Self {
        self.caller_errors = outcome;
        self
    }

    /// The outcome of one error under this classifier.
    #[inline]
    pub fn classify_error(&self, error: &::sqlx::Error) -> Outcome {
        match fault(error) {
            Fault::Dependency => Outcome::Failure,
            Fault::Caller => self.caller_errors,
            Fault::NotSent => Outcome::Ignore,
        }
    }
}

impl<T> Classify<T, ::sqlx::Error> for SqlxErrorsAsFailures {
    #[inline]
    fn classify(&self, result: &Result<T, ::sqlx::Error>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) => self.classify_error(error),
        }
    }
}

/// Whether `error` is a failure of the database (or of the way to it)
/// rather than the caller's: `true` for a lost connection, a pool timeout,
/// a server shutting down or out of connections, a lock wait timeout;
/// `false` for a constraint violation, data too long, a syntax error, no
/// row, a closed pool. See the [module docs](self) for the table.
///
/// For code of your own: a handler that answers `4xx` for the caller's
/// errors and `503` for the database's, a recovery action, a log line.
pub fn is_dependency_failure(error: &::sqlx::Error) -> bool {
    fault(error) == Fault::Dependency
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The database, or the way to it.
    Dependency,
    /// The call: the database answered it.
    Caller,
    /// Nothing reached the database.
    NotSent,
}

fn fault(error: &::sqlx::Error) -> Fault {
    use ::sqlx::Error as E;
    match error {
        E::Database(e) => {
            if database_failure(&**e) {
                Fault::Dependency
            } else {
                Fault::Caller
            }
        }
        E::RowNotFound
        | E::TypeNotFound { .. }
        | E::ColumnIndexOutOfBounds { .. }
        | E::ColumnNotFound(_)
        | E::ColumnDecode { .. }
        | E::Decode(_) => Fault::Caller,
        E::Encode(_)
        | E::InvalidArgument(_)
        | E::InvalidSavePointStatement
        | E::AnyDriverError(_)
        | E::PoolClosed => Fault::NotSent,
        // Io, Tls, Protocol, PoolTimedOut, WorkerCrashed, BeginFailed,
        // Configuration, Migrate, and whatever a later sqlx adds.
        _ => Fault::Dependency,
    }
}

/// Whether an error answered by the database means it cannot serve.
fn database_failure(error: &dyn DatabaseError) -> bool {
    match error.kind() {
        ErrorKind::UniqueViolation
        | ErrorKind::ForeignKeyViolation
        | ErrorKind::NotNullViolation
        | ErrorKind::CheckViolation => return false,
        _ => {}
    }
    let mut head = Head::new();
    // Stops (with an error, by design) once the buffer is full.
    let _ = write!(head, "{error}");
    if let Some(code) = head.sqlite_code() {
        return sqlite_failure(code);
    }
    let state = error.code();
    let state = state.as_deref();
    if let Some(failure) = head.mysql_number(state).and_then(mysql_failure) {
        return failure;
    }
    state.is_some_and(sqlstate_failure)
}

/// By SQLSTATE (ISO/IEC 9075, PostgreSQL appendix A, MySQL's mapping).
fn sqlstate_failure(state: &str) -> bool {
    let class = state.get(..2).unwrap_or(state);
    matches!(class, "08" | "28" | "53" | "57" | "58" | "XX")
        || matches!(
            state,
            "HY001" | "HYT00" | "HYT01" | "3D000" | "25006" | "40003" | "55P03" | "70100"
        )
}

/// By MySQL/MariaDB error number where the SQLSTATE is not precise enough;
/// `None` leaves the decision to the SQLSTATE.
fn mysql_failure(number: u16) -> Option<bool> {
    match number {
        // Disk full, storage engine error, out of memory, out of
        // resources, database access denied, unknown database, unknown
        // error, table full, host blocked / not allowed, no thread,
        // commit / rollback failed, user connection limits, lock wait
        // timeout, read-only, interrupted, too many transactions, killed,
        // statement / query timeouts, disconnected for inactivity.
        1021
        | 1030
        | 1037
        | 1038
        | 1040
        | 1041
        | 1043
        | 1044
        | 1045
        | 1049
        | 1053
        | 1105
        | 1114
        | 1129
        | 1130
        | 1135
        | 1152
        | 1158..=1161
        | 1180
        | 1181
        | 1184
        | 1203
        | 1205
        | 1226
        | 1290
        | 1317
        | 1637
        | 1836
        | 1927
        | 1969
        | 3024
        | 4031 => Some(true),
        // Client-side codes, for drivers that report them as server errors.
        2002 | 2003 | 2006 | 2013 | 2055 => Some(true),
        // Packet larger than max_allowed_packet (08S01, but the caller's
        // value), deadlock (documented: not a failure), a write in a
        // read-only transaction the caller opened.
        1153 | 1213 | 1792 => Some(false),
        _ => None,
    }
}

/// By SQLite primary result code (the low byte of the extended code).
fn sqlite_failure(extended: i32) -> bool {
    const PERM: i32 = 3;
    const BUSY: i32 = 5;
    const NOMEM: i32 = 7;
    const READONLY: i32 = 8;
    const IOERR: i32 = 10;
    const CORRUPT: i32 = 11;
    const FULL: i32 = 13;
    const CANTOPEN: i32 = 14;
    const PROTOCOL: i32 = 15;
    const NOTADB: i32 = 26;
    matches!(
        extended & 0xff,
        PERM | BUSY | NOMEM | READONLY | IOERR | CORRUPT | FULL | CANTOPEN | PROTOCOL | NOTADB
    )
}

/// The first bytes of an error's message, on the stack.
struct Head {
    buf: [u8; 32],
    len: usize,
}

impl Head {
    fn new() -> Self {
        Self {
            buf: [0; 32],
            len: 0,
        }
    }

    fn text(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// SQLite's `(code: 2067) UNIQUE constraint failed: ...`.
    fn sqlite_code(&self) -> Option<i32> {
        let rest = self.text().strip_prefix(b"(code: ")?;
        let (digits, rest) = split_digits(rest);
        if !rest.starts_with(b")") {
            return None;
        }
        parse(digits)
    }

    /// MySQL's `1406 (22001): Data too long ...` (the SQLSTATE in the
    /// message must be `state`), or `1406: ...` when it has none.
    fn mysql_number(&self, state: Option<&str>) -> Option<u16> {
        let (digits, rest) = split_digits(self.text());
        let matches = match state {
            Some(state) => rest
                .strip_prefix(b" (")
                .and_then(|r| r.strip_prefix(state.as_bytes()))
                .is_some_and(|r| r.starts_with(b"):")),
            None => rest.starts_with(b":"),
        };
        if !matches {
            return None;
        }
        parse(digits)
    }
}

impl fmt::Write for Head {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if self.len == self.buf.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

fn split_digits(text: &[u8]) -> (&[u8], &[u8]) {
    let n = text.iter().take_while(|b| b.is_ascii_digit()).count();
    text.split_at(n)
}

fn parse<N: std::str::FromStr>(digits: &[u8]) -> Option<N> {
    if digits.is_empty() {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::error::Error as StdError;

    /// A database error as a driver would report it.
    #[derive(Debug)]
    struct Fake {
        display: &'static str,
        code: Option<&'static str>,
        kind: ErrorKind,
    }

    impl fmt::Display for Fake {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.display)
        }
    }

    impl StdError for Fake {}

    impl DatabaseError for Fake {
        fn message(&self) -> &str {
            self.display
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            self.code.map(Cow::Borrowed)
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            match self.kind {
                ErrorKind::UniqueViolation => ErrorKind::UniqueViolation,
                _ => ErrorKind::Other,
            }
        }
    }

    fn db(display: &'static str, code: Option<&'static str>) -> ::sqlx::Error {
        ::sqlx::Error::Database(Box::new(Fake {
            display,
            code,
            kind: ErrorKind::Other,
        }))
    }

    #[test]
    fn mariadb_numbers() {
        for (display, code, failure) in [
            (
                "1406 (22001): Data too long for column 'complaint' at row 1",
                "22001",
                false,
            ),
            (
                "1064 (42000): You have an error in your SQL syntax",
                "42000",
                false,
            ),
            (
                "1062 (23000): Duplicate entry 'a' for key 'PRIMARY'",
                "23000",
                false,
            ),
            ("1366 (HY000): Incorrect integer value", "HY000", false),
            (
                "1213 (40001): Deadlock found when trying to get lock",
                "40001",
                false,
            ),
            (
                "1153 (08S01): Got a packet bigger than 'max_allowed_packet'",
                "08S01",
                false,
            ),
            ("1040 (08004): Too many connections", "08004", true),
            ("1053 (08S01): Server shutdown in progress", "08S01", true),
            ("1205 (HY000): Lock wait timeout exceeded", "HY000", true),
            (
                "1203 (42000): User root already has more than 'max_user_connections'",
                "42000",
                true,
            ),
            (
                "1290 (HY000): The MariaDB server is running with the --read-only option",
                "HY000",
                true,
            ),
            ("1927 (70100): Connection was killed", "70100", true),
            (
                "1969 (70100): Query execution was interrupted (max_statement_time exceeded)",
                "70100",
                true,
            ),
            (
                "2013 (HY000): Lost connection to server during query",
                "HY000",
                true,
            ),
            ("1045 (28000): Access denied for user", "28000", true),
        ] {
            assert_eq!(
                is_dependency_failure(&db(display, Some(code))),
                failure,
                "{display}"
            );
        }
        // Without a SQLSTATE in the message.
        assert!(is_dependency_failure(&db("1205: Lock wait timeout", None)));
        assert!(!is_dependency_failure(&db("1406: Data too long", None)));
    }

    #[test]
    fn postgres_states() {
        for (code, failure) in [
            ("23505", false),
            ("22001", false),
            ("42601", false),
            ("40001", false),
            ("40P01", false),
            ("08006", true),
            ("57P01", true),
            ("57P03", true),
            ("53300", true),
            ("57014", true),
            ("55P03", true),
            ("XX000", true),
            ("3D000", true),
        ] {
            assert_eq!(
                is_dependency_failure(&db("some message", Some(code))),
                failure,
                "{code}"
            );
        }
        // A message that looks like a MySQL number but whose SQLSTATE does
        // not match is read by its SQLSTATE.
        assert!(!is_dependency_failure(&db(
            "1205 (zzzzz): no",
            Some("23505")
        )));
    }

    #[test]
    fn sqlite_codes() {
        for (display, failure) in [
            ("(code: 2067) UNIQUE constraint failed: firs.id", false),
            ("(code: 1) near \"SELEC\": syntax error", false),
            ("(code: 18) string or blob too big", false),
            ("(code: 5) database is locked", true),
            ("(code: 517) database is locked", true),
            ("(code: 10) disk I/O error", true),
            ("(code: 13) database or disk is full", true),
            ("(code: 14) unable to open database file", true),
        ] {
            assert_eq!(
                is_dependency_failure(&db(display, Some("0"))),
                failure,
                "{display}"
            );
        }
    }

    #[test]
    fn constraint_kinds_are_the_callers() {
        let e = ::sqlx::Error::Database(Box::new(Fake {
            display: "1040 (08004): looks like too many connections",
            code: Some("08004"),
            kind: ErrorKind::UniqueViolation,
        }));
        assert!(!is_dependency_failure(&e));
    }

    #[test]
    fn variants() {
        let c = SqlxErrorsAsFailures::new();
        let io = ::sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(c.classify_error(&io), Outcome::Failure);
        assert_eq!(
            c.classify_error(&::sqlx::Error::PoolTimedOut),
            Outcome::Failure
        );
        assert_eq!(
            c.classify_error(&::sqlx::Error::WorkerCrashed),
            Outcome::Failure
        );
        assert_eq!(
            c.classify_error(&::sqlx::Error::Protocol("bad packet".into())),
            Outcome::Failure
        );
        assert_eq!(
            c.classify_error(&::sqlx::Error::RowNotFound),
            Outcome::Success
        );
        assert_eq!(
            c.classify_error(&::sqlx::Error::ColumnNotFound("x".into())),
            Outcome::Success
        );
        assert_eq!(
            c.classify_error(&::sqlx::Error::PoolClosed),
            Outcome::Ignore
        );
        assert_eq!(
            c.classify_error(&::sqlx::Error::Encode("no".into())),
            Outcome::Ignore
        );
        let c = c.caller_errors(Outcome::Ignore);
        assert_eq!(
            c.classify_error(&::sqlx::Error::RowNotFound),
            Outcome::Ignore
        );
        assert_eq!(c.classify(&Ok::<_, ::sqlx::Error>(1)), Outcome::Success);
    }

    #[test]
    fn the_head_stops_at_its_size() {
        let mut head = Head::new();
        let long = "9".repeat(100);
        assert!(write!(head, "{long}").is_err());
        assert_eq!(head.text().len(), 32);
        assert_eq!(head.mysql_number(None), None);
    }
}
