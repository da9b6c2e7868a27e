//! The registry: one breaker per key, made on first use, bounded.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use super::{Key, KeyedCircuitBreakerLayer, Summary};
use crate::circuit_breaker::core::{Core, Ticket};
use crate::circuit_breaker::{Breaker, Builder as BreakerBuilder, Rejection, Snapshot, State};
use crate::clock::{Clock, saturating_nanos};
use crate::lease::Lease;
use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{Mutex, Swap, lock};

/// Hashes keys to shards and within them: random per registry (keys come
/// from requests), fixed under the model checker, whose executions must
/// each touch the same shard.
#[cfg(not(tower_recovery_loom))]
type Hasher = std::hash::RandomState;
#[cfg(tower_recovery_loom)]
type Hasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

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
    shards: Box<[Shard<K>]>,
    hasher: Hasher,
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

/// Part of the key map. Calls read it without a lock (a snapshot of the
/// map, replaced whole by each change); changes (a new key, a sweep) are
/// made one at a time under `write`.
struct Shard<K> {
    map: Swap<HashMap<K, Arc<Entry>, Hasher>>,
    write: Mutex<()>,
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
    /// Set by a sweep about to drop the key (and cleared if it keeps it
    /// after all). A call that finds it set does not use the key's breaker:
    /// see `Entry::enter`.
    evicting: AtomicBool,
}

impl Entry {
    fn new(breaker: Breaker, now: u64) -> Self {
        Self {
            breaker,
            used: AtomicBool::new(false),
            seen: AtomicU64::new(now),
            evicting: AtomicBool::new(false),
        }
    }

    #[inline]
    fn touch(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Counts a call in flight on this key's breaker, unless a sweep is
    /// dropping the key: then nothing is counted and the call must find
    /// the key again (under the shard's write lock, once the sweep is
    /// done with it).
    ///
    /// The count is raised before the flag is read, and the sweep sets the
    /// flag before it reads the count (all sequentially consistent): one of
    /// the two sees the other, so either the sweep keeps the key or the
    /// call does not use it. Never both missed.
    #[inline]
    fn enter(&self) -> bool {
        self.touch();
        self.breaker.core.enter();
        if self.evicting.load(Ordering::SeqCst) {
            self.breaker.core.leave_uncounted();
            return false;
        }
        true
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
                shards: (0..SHARDS)
                    .map(|_| Shard {
                        map: Swap::new(HashMap::default()),
                        write: Mutex::new(()),
                    })
                    .collect(),
                hasher: Hasher::default(),
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
    ///
    /// The handle is the key's breaker while the registry keeps the key:
    /// calls made through it directly (not through the registry's layer)
    /// do not mark the key used, and once the key is dropped for being idle
    /// the handle is a breaker of its own that the registry no longer
    /// shows. Ask the registry again rather than keeping it.
    pub fn get(&self, key: &K) -> Breaker {
        let shard = &self.shared.shards[self.shard(key)];
        if let Some(entry) = shard.map.load().get(key) {
            entry.touch();
            return entry.breaker.clone();
        }
        let (core, counted) = self.enter_new(key, shard);
        if counted {
            core.leave_uncounted();
        }
        Breaker { core }
    }

    /// The breaker of `key` if it has one; makes nothing.
    pub fn find(&self, key: &K) -> Option<Breaker> {
        let shard = &self.shared.shards[self.shard(key)];
        shard.map.load().get(key).map(|e| e.breaker.clone())
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
            let map = shard.map.load();
            all.extend(map.iter().map(|(k, e)| (k.clone(), e.breaker.clone())));
        }
        all
    }

    #[inline]
    fn shard(&self, key: &K) -> usize {
        (self.shared.hasher.hash_one(key) as usize) & (SHARDS - 1)
    }

    /// The breaker of a key the call did not find in the map (or found
    /// being evicted): found again under the shard's write lock, or made,
    /// or the overflow breaker past the cap. With whether the call is
    /// counted in flight on it (never on the overflow breaker, which no
    /// sweep drops).
    #[cold]
    #[inline(never)]
    fn enter_new(&self, key: &K, shard: &Shard<K>) -> (Arc<Core>, bool) {
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
            let _write = lock(&shard.write);
            if let Some(entry) = shard.map.load().get(key) {
                // Under the write lock no sweep is deciding this shard's
                // keys, so the key is not being evicted.
                let entered = entry.enter();
                debug_assert!(entered);
                return (entry.breaker.core.clone(), entered);
            }
            shared.overflowed.fetch_add(1, Ordering::Relaxed);
            return (shared.overflow.core.clone(), false);
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
        let write = lock(&shard.write);
        let map = shard.map.load();
        if let Some(entry) = map.get(key) {
            let entered = entry.enter();
            debug_assert!(entered);
            return (entry.breaker.core.clone(), entered);
        }
        let room = shared
            .len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.max_keys).then_some(n + 1)
            })
            .is_ok();
        if !room {
            drop(write);
            shared.overflowed.fetch_add(1, Ordering::Relaxed);
            return (shared.overflow.core.clone(), false);
        }
        // Counted in flight before anyone can see it; not marked used (its
        // creation time is its last use).
        let entered = breaker.core.enter();
        let entry = Arc::new(Entry::new(breaker, now));
        let core = entry.breaker.core.clone();
        #[cfg(feature = "metrics")]
        let joined = core.cfg.keyed.as_ref().map(|m| m.join());
        let mut next = HashMap::clone(&map);
        next.insert(key.clone(), entry);
        shard.map.store(next);
        drop(map);
        drop(write);
        #[cfg(feature = "metrics")]
        if let Some(joined) = joined {
            joined.report();
        }
        (core, entered)
    }

    /// Drops the closed keys not used since `timeout` before `now`, and
    /// with no call in flight.
    fn sweep(&self, now: u64) -> usize {
        let Some(timeout) = self.shared.idle_timeout else {
            return 0;
        };
        let mut dropped = 0;
        // The evicted breakers, dropped once no shard's lock is held: the
        // last handle of a breaker drops its event channels, which wakes
        // their receivers (someone else's code).
        let mut evicted = Vec::new();
        #[cfg(feature = "metrics")]
        let mut left = Vec::new();
        for shard in self.shared.shards.iter() {
            let write = lock(&shard.write);
            let map = shard.map.load();
            let mut doomed = Vec::new();
            for (key, entry) in map.iter() {
                let core = &entry.breaker.core;
                if entry.used.swap(false, Ordering::Relaxed) || core.state() != State::Closed {
                    // Used, or not closed (an open key must never be
                    // forgotten: that would readmit a failing upstream):
                    // a closed key is idle from here at the earliest.
                    entry.seen.store(now, Ordering::Relaxed);
                    continue;
                }
                if now.saturating_sub(entry.seen.load(Ordering::Relaxed)) < timeout {
                    continue;
                }
                // Idle by its calls' starts; dropped only if no call is in
                // flight. The flag first, then the count (see
                // `Entry::enter`); then the state, which a call that ended
                // since may have changed (it records before it leaves).
                entry.evicting.store(true, Ordering::SeqCst);
                if core.in_flight() != 0 || core.state() != State::Closed {
                    entry.evicting.store(false, Ordering::SeqCst);
                    entry.seen.store(now, Ordering::Relaxed);
                    continue;
                }
                doomed.push(key.clone());
            }
            if doomed.is_empty() {
                continue;
            }
            let mut next = HashMap::clone(&map);
            for key in &doomed {
                if let Some(entry) = next.remove(key) {
                    #[cfg(feature = "metrics")]
                    if let Some(member) = &entry.breaker.core.cfg.keyed {
                        left.push(member.leave());
                    }
                    evicted.push(entry);
                }
            }
            dropped += doomed.len();
            shard.map.store(next);
            drop(map);
            drop(write);
            // Keys are cloned under the lock: dropped after it.
            drop(doomed);
        }
        self.shared.len.fetch_sub(dropped, Ordering::AcqRel);
        self.shared
            .evicted
            .fetch_add(dropped as u64, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        for left in left {
            left.report();
        }
        drop(evicted);
        dropped
    }

    /// Admission for one call of `key`: the lease and the started ticket,
    /// or the rejection. The key's breaker is found in a snapshot of the
    /// map (no lock, no shared write), its call counted in flight, and
    /// only then asked for admission, with no lock held (an admission may
    /// make a transition, which wakes and logs).
    #[inline]
    pub(super) fn admit(&self, key: &K) -> Result<(Lease<Core>, Ticket), Rejection> {
        let shard = &self.shared.shards[self.shard(key)];
        let found = {
            let map = shard.map.load();
            match map.get(key) {
                Some(entry) if entry.enter() => Some(
                    Lease::reuse(&entry.breaker.core).ok_or_else(|| entry.breaker.core.clone()),
                ),
                _ => None,
            }
        };
        let (lease, counted) = match found {
            Some(lease) => (lease.unwrap_or_else(Lease::from_arc), true),
            None => {
                let (core, counted) = self.enter_new(key, shard);
                (Lease::from_arc(core), counted)
            }
        };
        let mut ticket = match lease.admit() {
            Ok(ticket) => ticket,
            Err(rejected) => {
                if counted {
                    lease.leave_uncounted();
                }
                return Err(rejected);
            }
        };
        lease.start(&mut ticket);
        if counted {
            ticket = ticket.counted();
        }
        Ok((lease, ticket))
    }

    /// The breaker of `key` with a call counted in flight on it, for the
    /// model checker (which runs no leases): the same finding as `admit`.
    #[cfg(all(test, tower_recovery_loom))]
    pub(crate) fn enter_for_model(&self, key: &K) -> (Breaker, bool) {
        let shard = &self.shared.shards[self.shard(key)];
        {
            let map = shard.map.load();
            if let Some(entry) = map.get(key) {
                if entry.enter() {
                    return (entry.breaker.clone(), true);
                }
            }
        }
        let (core, counted) = self.enter_new(key, shard);
        (Breaker { core }, counted)
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
