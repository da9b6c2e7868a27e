//! The registry: one breaker per key, made on first use, bounded.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use super::{Key, KeyedCircuitBreakerLayer, Summary};
use crate::circuit_breaker::core::{Core, Ticket};
use crate::circuit_breaker::{Breaker, Builder as BreakerBuilder, Rejection, Snapshot, State};
use crate::clock::{Clock, saturating_nanos};
use crate::lease::Lease;

/// Shards of the key map: a power of two, so that threads working for
/// different keys rarely share a lock word.
const SHARDS: usize = 16;
/// The longest key text kept in a breaker's name (bytes).
const KEY_TEXT_MAX: usize = 96;

/// One breaker per key (an upstream host, a tenant, a route), made on first
/// use from a template [`Builder`](crate::circuit_breaker::Builder). Cheap to
/// clone: clones share the registry.
///
/// See the [module docs](super) for the policies: the cap on keys, what a
/// new key gets once it is reached, and idle eviction.
pub struct KeyedBreaker<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for KeyedBreaker<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<K> {
    name: Arc<str>,
    template: BreakerBuilder,
    shards: Box<[RwLock<HashMap<K, Entry>>]>,
    hasher: RandomState,
    len: AtomicUsize,
    max_keys: usize,
    idle_timeout: Option<u64>,
    overflow: Breaker,
    overflowed: AtomicU64,
    evicted: AtomicU64,
    clock: Clock,
    /// When the last sweep for idle keys ran (clock nanoseconds).
    last_sweep: AtomicU64,
}

/// A key's breaker, and what idle eviction needs to know of it.
struct Entry {
    breaker: Breaker,
    /// Set by each call (a load, and a store only when it was clear),
    /// cleared by a sweep: no clock is read per call.
    used: AtomicBool,
    /// The time of the latest sweep that found the key used, or its
    /// creation: its last call was no later than this.
    seen: AtomicU64,
}

impl Entry {
    #[inline]
    fn touch(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }
}

/// Configures a [`KeyedBreaker`]. Made by [`KeyedBreaker::builder`].
#[derive(Debug)]
pub struct Builder<K> {
    template: BreakerBuilder,
    max_keys: usize,
    idle_timeout: Option<Duration>,
    _key: std::marker::PhantomData<fn() -> K>,
}

impl<K: Key> Builder<K> {
    /// The most keys with a breaker of their own (default 1,000). A new key
    /// past the cap shares the overflow breaker (`{name}[overflow]`) until
    /// idle keys are evicted: see the [module docs](super).
    ///
    /// # Panics
    /// If `max` is zero.
    pub fn max_keys(mut self, max: usize) -> Self {
        assert!(max > 0, "max_keys must be at least 1");
        self.max_keys = max;
        self
    }

    /// A closed key with no call for `timeout` is dropped (default 10
    /// minutes). Open, half-open, forced-open and disabled keys are never
    /// dropped.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Keys are never dropped for being idle; only the cap bounds memory.
    pub fn no_idle_timeout(mut self) -> Self {
        self.idle_timeout = None;
        self
    }

    /// Builds the registry (no key has a breaker yet).
    pub fn build(self) -> KeyedBreaker<K> {
        let name: Arc<str> = self.template.name().into();
        let clock = self.template.clock_or_default();
        let overflow = self
            .template
            .clone()
            .renamed(format!("{name}[overflow]").into())
            .build();
        KeyedBreaker {
            shared: Arc::new(Shared {
                name,
                template: self.template,
                shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
                hasher: RandomState::new(),
                len: AtomicUsize::new(0),
                max_keys: self.max_keys,
                idle_timeout: self.idle_timeout.map(saturating_nanos),
                overflow,
                overflowed: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                last_sweep: AtomicU64::new(clock.now_nanos()),
                clock,
            }),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

// ===== impl KeyedBreaker =====

impl<K: Key> KeyedBreaker<K> {
    /// A registry whose breakers are built like `template` (its name is the
    /// registry's; each key's breaker is named `{name}[{key}]`), with the
    /// defaults: at most 1,000 keys, idle keys dropped after 10 minutes.
    pub fn new(template: BreakerBuilder) -> Self {
        Self::builder(template).build()
    }

    /// Configures a registry whose breakers are built like `template`.
    pub fn builder(template: BreakerBuilder) -> Builder<K> {
        Builder {
            template,
            max_keys: 1_000,
            idle_timeout: Some(Duration::from_secs(600)),
            _key: std::marker::PhantomData,
        }
    }

    /// The registry's name (the template's).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A layer that guards a service with the breaker of each request's key,
    /// as `extract` finds it: see [`ExtractKey`](super::ExtractKey).
    pub fn layer<F>(&self, extract: F) -> KeyedCircuitBreakerLayer<K, F> {
        KeyedCircuitBreakerLayer::new(self.clone(), extract)
    }

    /// The breaker of `key`, made now if it has none. Past the cap, the
    /// overflow breaker (see the [module docs](super)).
    pub fn get(&self, key: &K) -> Breaker {
        Breaker {
            core: self.with_core(key, Arc::clone),
        }
    }

    /// The breaker of `key` if it has one; makes nothing.
    pub fn find(&self, key: &K) -> Option<Breaker> {
        let shard = &self.shared.shards[self.shard(key)];
        read(shard).get(key).map(|e| e.breaker.clone())
    }

    /// The breaker new keys share once the cap is reached.
    pub fn overflow(&self) -> &Breaker {
        &self.shared.overflow
    }

    /// Keys with a breaker of their own.
    pub fn len(&self) -> usize {
        self.shared.len.load(Ordering::Acquire)
    }

    /// Whether no key has a breaker of its own.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cap on keys.
    pub fn max_keys(&self) -> usize {
        self.shared.max_keys
    }

    /// Calls routed to the overflow breaker because the cap was reached.
    pub fn overflowed(&self) -> u64 {
        self.shared.overflowed.load(Ordering::Relaxed)
    }

    /// Keys dropped for being idle since creation.
    pub fn evicted(&self) -> u64 {
        self.shared.evicted.load(Ordering::Relaxed)
    }

    /// Every key with its breaker's snapshot, in no particular order. The
    /// keys and handles are copied under each shard's lock; the breakers
    /// are read after it is released.
    pub fn snapshot(&self) -> Vec<(K, Snapshot)> {
        self.breakers()
            .into_iter()
            .map(|(key, breaker)| (key, breaker.snapshot()))
            .collect()
    }

    /// Totals by state, and the keys not closed (at most `max_listed`, by
    /// name, with a count of the rest): what `/reliability` shows.
    pub fn summary(&self, max_listed: usize) -> Summary {
        let mut summary = Summary {
            name: self.shared.name.clone(),
            keys: 0,
            max_keys: self.shared.max_keys,
            closed: 0,
            open: 0,
            half_open: 0,
            forced_open: 0,
            disabled: 0,
            not_closed: Vec::new(),
            not_closed_unlisted: 0,
            overflow: self.shared.overflow.snapshot(),
            overflowed: self.overflowed(),
            evicted: self.evicted(),
        };
        let mut not_closed = Vec::new();
        for (_, breaker) in self.breakers() {
            summary.keys += 1;
            let state = breaker.state();
            match state {
                State::Closed => summary.closed += 1,
                State::Open => summary.open += 1,
                State::HalfOpen => summary.half_open += 1,
                State::ForcedOpen => summary.forced_open += 1,
                State::Disabled => summary.disabled += 1,
            }
            if state != State::Closed {
                not_closed.push(breaker);
            }
        }
        not_closed.sort_unstable_by(|a, b| a.name().cmp(b.name()));
        summary.not_closed_unlisted = not_closed.len().saturating_sub(max_listed);
        not_closed.truncate(max_listed);
        summary.not_closed = not_closed.iter().map(Breaker::snapshot).collect();
        summary
    }

    /// Drops the closed keys with no call for the idle timeout, now, and
    /// returns how many. Calls run this by themselves when a new key comes
    /// (at most every quarter of the idle timeout); an application that
    /// wants stale keys gone sooner calls it on a timer.
    pub fn evict_idle(&self) -> usize {
        let now = self.shared.clock.now_nanos();
        self.shared.last_sweep.store(now, Ordering::Relaxed);
        self.sweep(now)
    }

    /// Copies of every key and breaker handle, taken shard by shard.
    fn breakers(&self) -> Vec<(K, Breaker)> {
        let mut all = Vec::with_capacity(self.len());
        for shard in self.shared.shards.iter() {
            let shard = read(shard);
            all.extend(shard.iter().map(|(k, e)| (k.clone(), e.breaker.clone())));
        }
        all
    }

    #[inline]
    fn shard(&self, key: &K) -> usize {
        (self.shared.hasher.hash_one(key) as usize) & (SHARDS - 1)
    }

    /// `f` of the breaker of `key` (made if it has none; the overflow
    /// breaker past the cap), under a shard's lock: `f` must be a plain
    /// read or a reference count.
    #[inline]
    fn with_core<R>(&self, key: &K, f: impl Fn(&Arc<Core>) -> R) -> R {
        let shard = &self.shared.shards[self.shard(key)];
        {
            let map = read(shard);
            if let Some(entry) = map.get(key) {
                entry.touch();
                return f(&entry.breaker.core);
            }
        }
        self.with_new(key, shard, &f)
    }

    /// The first call of `key`, or one past the cap.
    #[cold]
    #[inline(never)]
    fn with_new<R>(
        &self,
        key: &K,
        shard: &RwLock<HashMap<K, Entry>>,
        f: &dyn Fn(&Arc<Core>) -> R,
    ) -> R {
        let shared = &*self.shared;
        let now = shared.clock.now_nanos();
        if let Some(timeout) = shared.idle_timeout {
            let last = shared.last_sweep.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= timeout / 4
                && shared
                    .last_sweep
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.sweep(now);
            }
        }
        if shared.len.load(Ordering::Acquire) >= shared.max_keys {
            // Full: not worth building a breaker that cannot be kept (a
            // flood of new keys costs a lookup each, nothing more).
            if let Some(entry) = read(shard).get(key) {
                entry.touch();
                return f(&entry.breaker.core);
            }
            shared.overflowed.fetch_add(1, Ordering::Relaxed);
            return f(&shared.overflow.core);
        }
        // Built with no lock held; a racing thread that inserts first wins
        // and this one is dropped unused.
        let text = key_text(key);
        let breaker = shared
            .template
            .clone()
            .renamed(format!("{}[{text}]", shared.name).into())
            .keyed(&shared.name)
            .build();
        let mut map = write(shard);
        if let Some(entry) = map.get(key) {
            entry.touch();
            return f(&entry.breaker.core);
        }
        let room = shared
            .len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.max_keys).then_some(n + 1)
            })
            .is_ok();
        if !room {
            drop(map);
            shared.overflowed.fetch_add(1, Ordering::Relaxed);
            return f(&shared.overflow.core);
        }
        let out = f(&breaker.core);
        #[cfg(feature = "metrics")]
        let joined = breaker.core.cfg.keyed.as_ref().map(|m| m.join());
        map.insert(
            key.clone(),
            Entry {
                breaker,
                used: AtomicBool::new(false),
                seen: AtomicU64::new(now),
            },
        );
        drop(map);
        #[cfg(feature = "metrics")]
        if let Some(joined) = joined {
            joined.report();
        }
        out
    }

    /// Drops the closed keys not used since `timeout` before `now`.
    fn sweep(&self, now: u64) -> usize {
        let Some(timeout) = self.shared.idle_timeout else {
            return 0;
        };
        let mut dropped = 0;
        #[cfg(feature = "metrics")]
        let mut left = Vec::new();
        for shard in self.shared.shards.iter() {
            let mut map = write(shard);
            map.retain(|_, entry| {
                if entry.used.swap(false, Ordering::Relaxed)
                    || entry.breaker.core.state() != State::Closed
                {
                    // Used, or not closed (an open key must never be
                    // forgotten: that would readmit a failing upstream):
                    // a closed key is idle from here at the earliest.
                    entry.seen.store(now, Ordering::Relaxed);
                    return true;
                }
                let keep = now.saturating_sub(entry.seen.load(Ordering::Relaxed)) < timeout;
                if !keep {
                    dropped += 1;
                    #[cfg(feature = "metrics")]
                    if let Some(member) = &entry.breaker.core.cfg.keyed {
                        left.push(member.leave());
                    }
                }
                keep
            });
        }
        self.shared.len.fetch_sub(dropped, Ordering::AcqRel);
        self.shared
            .evicted
            .fetch_add(dropped as u64, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        for left in left {
            left.report();
        }
        dropped
    }

    /// Admission for one call of `key`: the lease and the started ticket,
    /// or the rejection. Under the shard's lock only a credit this thread
    /// holds is taken back, or a reference count; the breaker is asked
    /// for admission after the lock is released (an admission may make a
    /// transition, which wakes and logs).
    #[inline]
    pub(super) fn admit(&self, key: &K) -> Result<(Lease<Core>, Ticket), Rejection> {
        let lease = self
            .with_core(key, |core| Lease::reuse(core).ok_or_else(|| core.clone()))
            .unwrap_or_else(Lease::from_arc);
        let mut ticket = lease.admit()?;
        lease.start(&mut ticket);
        Ok((lease, ticket))
    }
}

/// The key as text for a breaker's name, cut to a bounded length (keys can
/// come from request headers).
fn key_text<K: fmt::Display>(key: &K) -> String {
    let mut text = key.to_string();
    if text.len() > KEY_TEXT_MAX {
        let mut end = KEY_TEXT_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl<K> fmt::Debug for KeyedBreaker<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreaker")
            .field("name", &self.shared.name)
            .field("keys", &self.shared.len.load(Ordering::Relaxed))
            .field("max_keys", &self.shared.max_keys)
            .finish_non_exhaustive()
    }
}
