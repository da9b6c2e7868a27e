//! [`RedisCoordinator`]: the fleet coordinated through Redis.
//!
//! Keys, under a namespace (default `tower-recovery`):
//!
//! | key | what |
//! |---|---|
//! | `{ns}:lease:{dependency}` | the lease: `{token}:{replica}`, set only if absent, with an expiry (`PX`) |
//! | `{ns}:token:{dependency}` | the fencing counter: the last token granted |
//! | `{ns}:outcome:{dependency}` | the last outcome accepted |
//! | `{ns}:replica:{replica}` | a replica's heartbeat, with an expiry |
//! | `{ns}:command:seq` | the last command number given (at least the server's clock in ms) |
//! | `{ns}:command:log` | the latest 64 command lines, newest first |
//! | `{ns}:standing` | a hash: per dependency, the line of its latest reset, force-open or disable (no expiry) |
//! | channel `{ns}:outcomes` | every outcome accepted |
//! | channel `{ns}:commands` | fleet commands (`?scope=fleet`) |
//!
//! Taking, renewing and releasing a lease, publishing an outcome and
//! broadcasting a command are Lua scripts, so each is atomic: a lease is
//! renewed or released only by the replica whose value it holds; an
//! outcome is accepted only while its token is the latest granted for the
//! dependency; a command's number, its place in the log, the dependency's
//! standing state and its publication are one step, so the standing state
//! is always the latest manual-state command by number.
//!
//! A token is one more than the last one granted, and at least the Redis
//! server's clock in milliseconds: a Redis that restarts without the
//! counter (no persistence, or a crash before its last snapshot) still
//! grants tokens newer than the ones granted before, so a holder from
//! before the restart stays fenced. (Redis 5 or newer: the script reads
//! `TIME` before it writes.) Command numbers are given the same way; a
//! line read back (from the log or the standing states) whose number is
//! more than a day ahead of the server's clock is skipped as forged.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};
use tokio::sync::mpsc;

use super::codec;
use super::{
    Acquire, BoxFuture, Command, Coordinator, Heartbeat, Holder, Lease, Message, Outcome,
    Published, Subscription, Unavailable,
};
use crate::sync::{Mutex, lock};

const ACQUIRE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  return {0, cur, redis.call('PTTL', KEYS[1])}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token = redis.call('INCR', KEYS[2])
if token <= now then
  token = now
  redis.call('SET', KEYS[2], string.format('%d', token))
end
local value = string.format('%d', token) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value, tonumber(ARGV[2])}
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

const PUBLISH: &str = r"
local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
if latest ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
";

/// A command gets the next number (so that a replica that was away can
/// tell which it missed) and the time it is sent, by the server's clock
/// (not the sender's, which may be off), is kept among the latest 64, and
/// is published. Returns the number and how many received it.
/// Like a fencing token, the number is at least the server's clock in
/// milliseconds: after a restart that lost the counter, commands are still
/// numbered after the ones the replicas saw before (and not taken for
/// those).
/// A reset, force-open or disable (`ARGV[4]` is `1`) is also the
/// dependency's (`ARGV[3]`) standing state. A standing key of another type
/// (not written by this crate) is replaced before anything is written, so
/// that the script never stops half-way.
const BROADCAST: &str = r"
if ARGV[4] == '1' then
  local kind = redis.call('TYPE', KEYS[3]).ok
  if kind ~= 'hash' and kind ~= 'none' then
    redis.call('DEL', KEYS[3])
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = redis.call('INCR', KEYS[1])
if id <= now then
  id = now
  redis.call('SET', KEYS[1], string.format('%d', id))
end
local line = 'v2' .. '\t' .. string.format('%d', id) .. '\t' .. string.format('%d', now) .. '\t' .. ARGV[1]
redis.call('LPUSH', KEYS[2], line)
redis.call('LTRIM', KEYS[2], 0, 63)
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[3], ARGV[3], line)
end
return {string.format('%d', id), redis.call('PUBLISH', ARGV[2], line)}
";

/// The standing states of the dependencies named (`ARGV`), as field and
/// value pairs (none if the key is not a hash), with the server's clock (in
/// milliseconds) to read their times by. Only the fields asked for are
/// read, and a value longer than any line this crate writes (8 KiB) is
/// skipped unread: a hash of any size, or a huge value, costs the server
/// no more than a few small reads.
const STANDING: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  return {now, {}}
end
local out = {}
for _, f in ipairs(ARGV) do
  local n = redis.call('HSTRLEN', KEYS[1], f)
  if n > 0 and n <= 8192 then
    table.insert(out, f)
    table.insert(out, redis.call('HGET', KEYS[1], f))
  end
end
return {now, out}
";

/// The kept commands, with the server's clock (in milliseconds) to read
/// their times by.
const RECENT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('LRANGE', KEYS[1], 0, 63)}
";

/// The URL given to [`RedisCoordinator::new`] is not a Redis URL.
#[derive(Debug)]
pub struct InvalidRedisUrl {
    reason: String,
}

impl fmt::Display for InvalidRedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid redis url: {}", self.reason)
    }
}

impl std::error::Error for InvalidRedisUrl {}

/// Configures a [`RedisCoordinator`].
#[derive(Debug)]
pub struct RedisBuilder {
    url: String,
    namespace: String,
    timeout: Duration,
}

impl RedisBuilder {
    /// The prefix of every key and channel (default `tower-recovery`):
    /// fleets that share a Redis must each have their own.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long a connection attempt or a command may take before Redis is
    /// deemed unreachable (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The coordinator. It connects lazily, on its first call, and again
    /// after a call fails.
    pub fn build(self) -> Result<RedisCoordinator, InvalidRedisUrl> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| InvalidRedisUrl {
            reason: e.to_string(),
        })?;
        let ns = self.namespace;
        Ok(RedisCoordinator {
            client,
            channel: format!("{ns}:outcomes"),
            commands: format!("{ns}:commands"),
            ns: ns.into(),
            timeout: self.timeout,
            conn: Mutex::new(None),
            scripts: Arc::new(Scripts {
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                publish: Script::new(PUBLISH),
                broadcast: Script::new(BROADCAST),
                recent: Script::new(RECENT),
                standing: Script::new(STANDING),
            }),
        })
    }
}

struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
    publish: Script,
    broadcast: Script,
    recent: Script,
    standing: Script,
}

/// A [`Coordinator`] on Redis (a single server, or a primary).
///
/// ```no_run
/// # async fn demo() -> Result<(), tower_recovery::BoxError> {
/// use std::time::Duration;
/// use tower_recovery::fleet::{Acquire, Coordinator, RedisCoordinator};
///
/// let redis = RedisCoordinator::builder("redis://127.0.0.1:6379/")
///     .namespace("fir-api")
///     .build()?;
/// match redis.acquire("model_server", "pod-a", Duration::from_secs(10)).await? {
///     Acquire::Granted(lease) => println!("ours, token {}", lease.token()),
///     Acquire::HeldBy(holder) => println!("held by {}", holder.replica),
/// }
/// # Ok(()) }
/// ```
pub struct RedisCoordinator {
    client: redis::Client,
    ns: Arc<str>,
    channel: String,
    commands: String,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
    scripts: Arc<Scripts>,
}

impl fmt::Debug for RedisCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCoordinator")
            .field("namespace", &self.ns)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisCoordinator {
    /// A coordinator on the Redis at `url` (`redis://host:port/db`), with
    /// the default namespace and timeout.
    pub fn new(url: &str) -> Result<Self, InvalidRedisUrl> {
        Self::builder(url).build()
    }

    /// Configures a coordinator on the Redis at `url`.
    pub fn builder(url: impl Into<String>) -> RedisBuilder {
        RedisBuilder {
            url: url.into(),
            namespace: "tower-recovery".to_string(),
            timeout: Duration::from_secs(1),
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.ns)
    }

    async fn conn(&self) -> Result<MultiplexedConnection, Unavailable> {
        if let Some(conn) = lock(&self.conn).clone() {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(Unavailable::new)?;
        *lock(&self.conn) = Some(conn.clone());
        Ok(conn)
    }

    /// A failed command: the connection is dropped, the next call makes a
    /// new one.
    fn failed(&self, e: redis::RedisError) -> Unavailable {
        *lock(&self.conn) = None;
        Unavailable::new(e)
    }
}

fn parse_value(value: &str) -> Option<(u64, &str)> {
    let (token, replica) = value.split_once(':')?;
    Some((token.parse().ok()?, replica))
}

/// How far a command's number may be ahead of the server's clock (in
/// milliseconds) to be believed: numbers are the server's clock when given,
/// or one more than the last (a burst of commands, or a server clock set
/// back). A number further ahead is forged or corrupted, and is skipped: a
/// replica would take it as the latest, and apply no real command after it.
const NUMBER_AHEAD_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// Whether a command number read back is within what the server could
/// have given by `server_now` (its clock in milliseconds).
fn plausible_number(id: u64, server_now: i64) -> bool {
    id <= (server_now.max(0) as u64).saturating_add(NUMBER_AHEAD_MAX_MS)
}

/// This replica's clock, in milliseconds since the Unix epoch.
fn local_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn expires(pttl: i64) -> Option<Duration> {
    u64::try_from(pttl).ok().map(Duration::from_millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Coordinator for RedisCoordinator {
    fn acquire<'a>(
        &'a self,
        dependency: &'a str,
        replica: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquire, Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let (granted, value, pttl): (i64, String, i64) = self
                .scripts
                .acquire
                .key(self.key("lease", dependency))
                .key(self.key("token", dependency))
                .arg(replica)
                .arg(millis(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            let (token, holder) = parse_value(&value)
                .ok_or_else(|| Unavailable::new(format!("unreadable lease value {value:?}")))?;
            Ok(if granted == 1 {
                Acquire::Granted(Lease::new(dependency, replica, token))
            } else {
                Acquire::HeldBy(Holder::new(holder, token, expires(pttl)))
            })
        })
    }

    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let renewed: i64 = self
                .scripts
                .renew
                .key(self.key("lease", lease.dependency()))
                .arg(format!("{}:{}", lease.token(), lease.replica()))
                .arg(millis(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(renewed == 1)
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let released: i64 = self
                .scripts
                .release
                .key(self.key("lease", lease.dependency()))
                .arg(format!("{}:{}", lease.token(), lease.replica()))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(released == 1)
        })
    }

    fn holder<'a>(
        &'a self,
        dependency: &'a str,
    ) -> BoxFuture<'a, Result<Option<Holder>, Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let key = self.key("lease", dependency);
            let (value, pttl): (Option<String>, i64) = redis::pipe()
                .get(&key)
                .pttl(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(value
                .as_deref()
                .and_then(parse_value)
                .map(|(token, replica)| Holder::new(replica, token, expires(pttl))))
        })
    }

    fn publish<'a>(
        &'a self,
        lease: &'a Lease,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let payload = codec::encode_published(&Published::new(lease, outcome.clone()));
            let accepted: i64 = self
                .scripts
                .publish
                .key(self.key("token", lease.dependency()))
                .key(self.key("outcome", lease.dependency()))
                .arg(lease.token())
                .arg(payload)
                .arg(&self.channel)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(accepted == 1)
        })
    }

    fn last_outcome<'a>(
        &'a self,
        dependency: &'a str,
    ) -> BoxFuture<'a, Result<Option<Published>, Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let value: Option<String> = redis::cmd("GET")
                .arg(self.key("outcome", dependency))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(value.as_deref().and_then(codec::decode_published))
        })
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<Subscription, Unavailable>> {
        Box::pin(async move {
            let connect = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                pubsub.subscribe(&self.commands).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(self.timeout, connect).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(e)) => return Err(Unavailable::new(e)),
                Err(_) => return Err(Unavailable::new("timed out subscribing")),
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let commands = self.commands.clone();
            tokio::spawn(async move {
                use futures_util::StreamExt;
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { return };
                            let Ok(text) = message.get_payload::<String>() else { continue };
                            let decoded = if message.get_channel_name() == commands {
                                codec::decode_command(&text).map(Message::Command)
                            } else {
                                codec::decode_published(&text).map(Message::Outcome)
                            };
                            if let Some(decoded) = decoded {
                                if tx.send(decoded).is_err() {
                                    return;
                                }
                            }
                        }
                        () = tx.closed() => return,
                    }
                }
            });
            Ok(Subscription::new(rx))
        })
    }

    fn broadcast<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<usize, Unavailable>> {
        Box::pin(async move { Ok(self.broadcast_numbered(command).await?.1) })
    }

    fn broadcast_numbered<'a>(
        &'a self,
        command: &'a Command,
    ) -> BoxFuture<'a, Result<(u64, usize), Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let (id, received): (String, usize) = self
                .scripts
                .broadcast
                .key(self.key("command", "seq"))
                .key(self.key("command", "log"))
                .key(format!("{}:standing", self.ns))
                .arg(codec::encode_command_fields(command))
                .arg(&self.commands)
                .arg(&*command.dependency)
                .arg(if command.action.is_manual_state() {
                    "1"
                } else {
                    "0"
                })
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok((id.parse().unwrap_or(0), received))
        })
    }

    fn recent_commands(&self) -> BoxFuture<'_, Result<Vec<Command>, Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            // Bytes: one line that is not UTF-8 must not fail the read
            // (a replica that cannot read the log does not join).
            let (server_now, lines): (i64, Vec<Vec<u8>>) = self
                .scripts
                .recent
                .key(self.key("command", "log"))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            // The times are the server's: read by this replica's clock
            // (which may be off from it).
            let offset = local_now_ms().saturating_sub(server_now);
            // Newest first in the list: oldest first here. A line this
            // version cannot read is skipped.
            Ok(lines
                .iter()
                .rev()
                .filter_map(|l| codec::decode_command(std::str::from_utf8(l).ok()?))
                .filter(|c| plausible_number(c.id, server_now))
                .map(|mut c| {
                    // (not after the server's now: a forged time would
                    // hide every heartbeat from `replicas_diverging`)
                    let sent = c.sent_at_ms.min(server_now.max(0) as u64) as i64;
                    c.sent_at_ms = sent.saturating_add(offset).max(0) as u64;
                    c
                })
                .collect())
        })
    }

    fn standing<'a>(
        &'a self,
        dependencies: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Vec<Command>, Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            // Bytes, as for the log: an odd field or value is skipped, it
            // does not fail the read.
            let mut script = self.scripts.standing.key(format!("{}:standing", self.ns));
            for name in dependencies {
                script.arg(&**name);
            }
            let (server_now, pairs): (i64, Vec<Vec<u8>>) = script
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            let offset = local_now_ms().saturating_sub(server_now);
            Ok(pairs
                .chunks_exact(2)
                .filter_map(|pair| codec::decode_standing(&pair[0], &pair[1]))
                .filter(|c| plausible_number(c.id, server_now))
                .map(|mut c| {
                    // (not after the server's now: a forged time would
                    // hide every heartbeat from `replicas_diverging`)
                    let sent = c.sent_at_ms.min(server_now.max(0) as u64) as i64;
                    c.sent_at_ms = sent.saturating_add(offset).max(0) as u64;
                    c
                })
                .collect())
        })
    }

    fn heartbeat<'a>(
        &'a self,
        beat: &'a Heartbeat,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let () = redis::cmd("SET")
                .arg(self.key("replica", &beat.replica))
                .arg(codec::encode_heartbeat(beat))
                .arg("PX")
                .arg(millis(ttl))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn replicas(&self) -> BoxFuture<'_, Result<Vec<Heartbeat>, Unavailable>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let pattern = format!("{}:replica:*", self.ns);
            let mut keys: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(200)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.failed(e))?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(values
                .into_iter()
                .flatten()
                .filter_map(|v| codec::decode_heartbeat(&v))
                .collect())
        })
    }
}
