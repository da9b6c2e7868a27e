//! The registry: one breaker per key, made on first use, bounded.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "recovery")]
use super::recovery::{Factory, Recoveries};
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
    /// The keys' recoveries and the overflow breaker's.
    #[cfg(feature = "recovery")]
    recoveries: Recoveries<K>,
}

/// Part of the key map. Calls read it without a lock (a snapshot of the
/// map, replaced whole by each change); changes (a new key, a sweep) are
/// made one at a time under `write`.
struct Shard<K> {
    map: Swap<HashMap<K, Arc<Entry>, Hasher>>,
    write: Mutex<()>,
}

/// A key's breaker (and recovery), and what idle eviction needs to know of
/// it.
struct Entry {
    breaker: Breaker,
    /// The key's recovery, made with its breaker (before the entry is
    /// published), dropped with the entry.
    #[cfg(feature = "recovery")]
    recovery: Option<crate::recovery::Recovery>,
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
    fn new(made: Made, now: u64) -> Self {
        Self {
            breaker: made.breaker,
            #[cfg(feature = "recovery")]
            recovery: made.recovery,
            used: AtomicBool::new(false),
            seen: AtomicU64::new(now),
            evicting: AtomicBool::new(false),
        }
    }

    /// Whether the key's recovery is at work (a cycle, a cooldown, an
    /// exhaustion): such a key is kept like an open one. One load.
    #[inline]
    fn recovering(&self) -> bool {
        #[cfg(feature = "recovery")]
        return self
            .recovery
            .as_ref()
            .is_some_and(crate::recovery::Recovery::is_busy);
        #[cfg(not(feature = "recovery"))]
        false
    }

    #[inline]
    fn touch(&self) {
        // A load first: a key called by many threads is written once per
        // sweep, not once per call. The model checker takes the swap: it
        // lets a load read a `true` that an earlier sweep's clearing has
        // long overwritten, which no real machine does a sweep interval
        // later (see the note on the sweep's second look at the mark).
        #[cfg(not(tower_recovery_loom))]
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        #[cfg(tower_recovery_loom)]
        self.used.swap(true, Ordering::Relaxed);
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

/// The sweep's marks on the keys it is dropping from one shard: cleared
/// when dropped unless emptied first (the shard's new map stored).
struct Unmark<'a, K>(Vec<(&'a K, &'a Entry)>);

impl<K> Drop for Unmark<'_, K> {
    fn drop(&mut self) {
        for (_, entry) in &self.0 {
            entry.evicting.store(false, Ordering::SeqCst);
        }
    }
}

/// A new key's breaker and recovery, built with no lock held, before the
/// key is published.
struct Made {
    breaker: Breaker,
    #[cfg(feature = "recovery")]
    recovery: Option<crate::recovery::Recovery>,
}

/// Configures a [`KeyedBreaker`]. Made by [`KeyedBreaker::builder`].
pub struct Builder<K> {
    template: BreakerBuilder,
    max_keys: usize,
    idle_timeout: Option<Duration>,
    #[cfg(feature = "recovery")]
    recovery: Option<Factory<K>>,
    #[cfg(feature = "recovery")]
    overflow_recovery: Option<crate::recovery::Builder>,
    _key: std::marker::PhantomData<fn() -> K>,
}

impl<K> fmt::Debug for Builder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Builder");
        d.field("template", &self.template)
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout);
        #[cfg(feature = "recovery")]
        d.field("recovery", &self.recovery.is_some())
            .field("overflow_recovery", &self.overflow_recovery);
        d.finish()
    }
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

    /// Gives each key a [`Recovery`](crate::recovery::Recovery) of its
    /// own, made with the key's breaker from the builder `factory` returns
    /// for the key: the action it runs knows its key (capture it), and the
    /// rest of its configuration (attempts, backoff, mode, alerts) is
    /// yours. The registry completes the builder: it watches the key's
    /// breaker, it is named like it (`{name}[{key}]`, whatever name the
    /// builder had), its metrics are labelled by the registry's name, and
    /// it is spawned. See the [module docs](super#a-recovery-per-key).
    ///
    /// `factory` runs on the first call of a key, with no lock held; when
    /// threads race on a new key it may run for each of them, and the
    /// recoveries of all but one are dropped before anyone could use
    /// their breaker (so their actions never run). A fleet given to its
    /// builders is ignored (logged): a key's recovery is this replica's.
    #[cfg(feature = "recovery")]
    #[cfg_attr(docsrs, doc(cfg(feature = "recovery")))]
    pub fn recovery<F>(mut self, factory: F) -> Self
    where
        F: Fn(&K) -> crate::recovery::Builder + Send + Sync + 'static,
    {
        self.recovery = Some(Arc::new(factory));
        self
    }

    /// Gives the overflow breaker (`{name}[overflow]`) a recovery:
    /// `recovery` completed as a key's is (it watches the overflow breaker
    /// and takes its name; its metrics keep that name, one series), made
    /// at the first call routed to the overflow breaker from inside a
    /// tokio runtime (starting a cycle at once if the overflow breaker is
    /// open by then). The keys' factory
    /// is not used for it: the overflow breaker stands for whichever keys
    /// came past the cap, so no key's action fits it.
    #[cfg(feature = "recovery")]
    #[cfg_attr(docsrs, doc(cfg(feature = "recovery")))]
    pub fn overflow_recovery(mut self, recovery: crate::recovery::Builder) -> Self {
        self.overflow_recovery = Some(recovery);
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
                #[cfg(feature = "recovery")]
                recoveries: Recoveries::new(self.recovery, self.overflow_recovery),
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
            #[cfg(feature = "recovery")]
            recovery: None,
            #[cfg(feature = "recovery")]
            overflow_recovery: None,
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

    /// The breaker of `key`, made now if it has none (with its recovery, if
    /// the registry gives keys one: see the [module
    /// docs](super#a-recovery-per-key)). Past the cap, the overflow
    /// breaker (see the [module docs](super)).
    ///
    /// The handle is the key's breaker while the registry keeps the key:
    /// calls made through it directly (not through the registry's layer)
    /// do not mark the key used, and once the key is dropped for being idle
    /// the handle is a breaker of its own that the registry no longer
    /// shows. Ask the registry again rather than keeping it.
    pub fn get(&self, key: &K) -> Breaker {
        let shard = &self.shared.shards[self.shard(key)];
        // Found as a call finds it (so that a sweep dropping the key at
        // this moment cannot hand out the breaker it drops: an operator's
        // `force_open` on it would be lost), then given back at once.
        let (core, counted) = match self.lookup(shard, key, Arc::clone) {
            Some(core) => (core, true),
            None => self.enter_new(key, shard),
        };
        if counted {
            core.leave_uncounted();
        }
        Breaker { core }
    }

    /// The breaker of `key` if it has one (and is not being dropped this
    /// moment); makes nothing.
    pub fn find(&self, key: &K) -> Option<Breaker> {
        let shard = &self.shared.shards[self.shard(key)];
        shard
            .map
            .load()
            .get(key)
            .filter(|e| !e.evicting.load(Ordering::SeqCst))
            .map(|e| e.breaker.clone())
    }

    /// The breaker new keys share once the cap is reached.
    pub fn overflow(&self) -> &Breaker {
        &self.shared.overflow
    }

    /// The recovery of `key` if it has a breaker with one (see
    /// [`Builder::recovery`]); makes nothing.
    ///
    /// As with [`get`](Self::get), ask again rather than keeping it: a
    /// handle kept keeps its task running after the key is dropped for
    /// being idle, watching a breaker the registry no longer has.
    #[cfg(feature = "recovery")]
    #[cfg_attr(docsrs, doc(cfg(feature = "recovery")))]
    pub fn recovery(&self, key: &K) -> Option<crate::recovery::Recovery> {
        let shard = &self.shared.shards[self.shard(key)];
        shard.map.load().get(key)?.recovery.clone()
    }

    /// The overflow breaker's recovery (see [`Builder::overflow_recovery`]),
    /// once the first call routed to the overflow breaker made it.
    #[cfg(feature = "recovery")]
    #[cfg_attr(docsrs, doc(cfg(feature = "recovery")))]
    pub fn overflow_recovery(&self) -> Option<crate::recovery::Recovery> {
        self.shared.recoveries.overflow().cloned()
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
            #[cfg(feature = "recovery")]
            recovering: 0,
            #[cfg(feature = "recovery")]
            exhausted: 0,
            #[cfg(feature = "recovery")]
            without_recovery: 0,
            #[cfg(feature = "recovery")]
            not_closed_recovery: Vec::new(),
            #[cfg(feature = "recovery")]
            overflow_recovery: self
                .shared
                .recoveries
                .overflow()
                .map(crate::recovery::Recovery::status),
        };
        // Each breaker not closed, with its recovery's status.
        #[cfg(feature = "recovery")]
        type Listed = (Breaker, Option<crate::recovery::Status>);
        #[cfg(not(feature = "recovery"))]
        type Listed = (Breaker, ());
        let mut not_closed: Vec<Listed> = Vec::new();
        for entry in self.entries() {
            summary.keys += 1;
            let state = entry.breaker.state();
            match state {
                State::Closed => summary.closed += 1,
                State::Open => summary.open += 1,
                State::HalfOpen => summary.half_open += 1,
                State::ForcedOpen => summary.forced_open += 1,
                State::Disabled => summary.disabled += 1,
            }
            #[cfg(feature = "recovery")]
            let recovery = {
                use crate::recovery::RecoveryState;
                let status = match &entry.recovery {
                    None => {
                        if self.shared.recoveries.per_key() {
                            summary.without_recovery += 1;
                        }
                        None
                    }
                    // Closed, and its recovery settled: idle (not worth
                    // a status, which copies the recovery's machine).
                    Some(r) if state == State::Closed && !r.is_busy() => None,
                    Some(r) => Some(r.status()),
                };
                match status.as_ref().map(|s| s.state) {
                    Some(RecoveryState::Recovering) => summary.recovering += 1,
                    Some(RecoveryState::Exhausted) => summary.exhausted += 1,
                    _ => {}
                }
                status
            };
            #[cfg(not(feature = "recovery"))]
            let recovery = ();
            if state != State::Closed {
                not_closed.push((entry.breaker.clone(), recovery));
            }
        }
        not_closed.sort_unstable_by(|a, b| a.0.name().cmp(b.0.name()));
        summary.not_closed_unlisted = not_closed.len().saturating_sub(max_listed);
        not_closed.truncate(max_listed);
        summary.not_closed = not_closed.iter().map(|(b, _)| b.snapshot()).collect();
        #[cfg(feature = "recovery")]
        {
            summary.not_closed_recovery = not_closed.into_iter().map(|(_, r)| r).collect();
        }
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

    /// Every entry, taken shard by shard (each from a snapshot, no lock).
    fn entries(&self) -> Vec<Arc<Entry>> {
        let mut all = Vec::with_capacity(self.len());
        for shard in self.shared.shards.iter() {
            all.extend(shard.map.load().values().cloned());
        }
        all
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
            // flood of new keys costs a lookup each, nothing more: the
            // lock only for a key found being dropped).
            let present = shard.map.load().contains_key(key);
            if !present {
                return self.enter_overflow();
            }
            let found = {
                let _write = lock(&shard.write);
                shard.map.load().get(key).map(|entry| {
                    // Under the write lock no sweep is deciding this
                    // shard's keys, so the key is not being evicted.
                    let entered = entry.enter();
                    debug_assert!(entered);
                    (entry.breaker.core.clone(), entered)
                })
            };
            return found.unwrap_or_else(|| self.enter_overflow());
        }
        // Built (and its recovery spawned) with no lock held; a racing
        // thread that inserts first wins and this one is dropped unused.
        let made = self.make(key);
        let write = lock(&shard.write);
        let map = shard.map.load();
        if let Some(entry) = map.get(key) {
            let entered = entry.enter();
            debug_assert!(entered);
            let found = (entry.breaker.core.clone(), entered);
            drop(map);
            drop(write);
            // No one saw this breaker, so its recovery has nothing to
            // recover: dropped (its task stops) with no lock held.
            drop(made);
            return found;
        }
        // The new map first (its keys' `Clone` may panic), then the slot.
        let mut next = HashMap::clone(&map);
        let new_key = key.clone();
        let room = shared
            .len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.max_keys).then_some(n + 1)
            })
            .is_ok();
        if !room {
            drop(map);
            drop(write);
            drop((next, new_key));
            drop(made);
            return self.enter_overflow();
        }
        // Counted in flight before anyone can see it; not marked used (its
        // creation time is its last use).
        let entered = made.breaker.core.enter();
        let entry = Arc::new(Entry::new(made, now));
        let core = entry.breaker.core.clone();
        #[cfg(feature = "metrics")]
        let joined = core.cfg.keyed.as_ref().map(|m| m.join());
        next.insert(new_key, entry);
        shard.map.store(next);
        drop(map);
        drop(write);
        #[cfg(feature = "metrics")]
        if let Some(joined) = joined {
            joined.report();
        }
        (core, entered)
    }

    /// A new key's breaker, named `{name}[{key}]`, and its recovery if the
    /// registry makes them. No lock is held: the recovery's factory is the
    /// user's code.
    fn make(&self, key: &K) -> Made {
        let shared = &*self.shared;
        let name: Arc<str> = format!("{}[{}]", shared.name, key_text(key)).into();
        let breaker = shared
            .template
            .clone()
            .renamed(name.clone())
            .keyed(&shared.name)
            .build();
        #[cfg(feature = "recovery")]
        let recovery = shared
            .recoveries
            .for_key(&shared.name, key, &name, &breaker);
        Made {
            breaker,
            #[cfg(feature = "recovery")]
            recovery,
        }
    }

    /// A call routed to the overflow breaker (no lock held): counted, and
    /// the overflow breaker's recovery made first if it is to have one.
    fn enter_overflow(&self) -> (Arc<Core>, bool) {
        let shared = &*self.shared;
        shared.overflowed.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "recovery")]
        shared
            .recoveries
            .for_overflow(&shared.name, &shared.overflow);
        (shared.overflow.core.clone(), false)
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
            // Keys marked for dropping, unmarked again if anything below
            // unwinds before the map without them is stored (a key's
            // `Clone` runs here): a key left marked would never again be
            // found by a call's lookup.
            let mut doomed = Unmark(Vec::new());
            for (key, entry) in map.iter() {
                let core = &entry.breaker.core;
                if entry.used.swap(false, Ordering::Relaxed)
                    || core.state() != State::Closed
                    || entry.recovering()
                {
                    // Used, or not closed (an open key must never be
                    // forgotten: that would readmit a failing upstream),
                    // or its recovery at work (a cycle, the cooldown after
                    // one, which a fresh recovery would not keep): a
                    // closed key is idle from here at the earliest.
                    entry.seen.store(now, Ordering::Relaxed);
                    continue;
                }
                if now.saturating_sub(entry.seen.load(Ordering::Relaxed)) < timeout {
                    continue;
                }
                // Idle by its calls' starts; dropped only if no call is in
                // flight. The flag first, then the count (see
                // `Entry::enter`); then the state, which a call that ended
                // since may have changed (it records before it leaves),
                // and the recovery's, which follows the state: it is busy
                // from its breaker's opening (after it, on its task) until
                // after the cooldown that follows its closing the breaker,
                // and the state is read first (acquiring the closing).
                //
                // Last, the mark again: a call that found the key after the
                // mark was cleared above and ended before the flag was set
                // left no count, but its mark (its end, read by the count's
                // read-modify-write, is ordered after it).
                entry.evicting.store(true, Ordering::SeqCst);
                if core.in_flight() != 0
                    || core.state() != State::Closed
                    || entry.recovering()
                    || entry.used.swap(false, Ordering::Relaxed)
                {
                    entry.evicting.store(false, Ordering::SeqCst);
                    entry.seen.store(now, Ordering::Relaxed);
                    continue;
                }
                doomed.0.push((key, &**entry));
            }
            if doomed.0.is_empty() {
                continue;
            }
            let mut next = HashMap::clone(&map);
            for (key, _) in &doomed.0 {
                if let Some(entry) = next.remove(*key) {
                    #[cfg(feature = "metrics")]
                    if let Some(member) = &entry.breaker.core.cfg.keyed {
                        left.push(member.leave());
                    }
                    evicted.push(entry);
                }
            }
            dropped += doomed.0.len();
            shard.map.store(next);
            // Stored: the marks stay (a call still holding the old map
            // must not use a dropped key).
            doomed.0.clear();
            drop(doomed);
            drop(write);
            // The old map (its keys) once no lock is held.
            drop(map);
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
        let found = self.lookup(shard, key, |core| {
            Lease::reuse(core).ok_or_else(|| core.clone())
        });
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

    /// The lock-free half of finding a key, shared by calls, `get` and the
    /// model checker: in the shard's snapshot, counted in flight unless a
    /// sweep is dropping it; `f` of its breaker, with the snapshot held
    /// (`f` must be a plain read or a reference count). `None`: not found,
    /// or being dropped (the caller goes on to `enter_new`).
    #[inline]
    fn lookup<R>(&self, shard: &Shard<K>, key: &K, f: impl FnOnce(&Arc<Core>) -> R) -> Option<R> {
        let map = shard.map.load();
        match map.get(key) {
            Some(entry) if entry.enter() => Some(f(&entry.breaker.core)),
            _ => None,
        }
    }

    /// The breaker of `key` with a call counted in flight on it, for the
    /// model checker (which runs no leases): the same finding as `admit`.
    #[cfg(all(test, tower_recovery_loom))]
    pub(crate) fn enter_for_model(&self, key: &K) -> (Breaker, bool) {
        let shard = &self.shared.shards[self.shard(key)];
        let (core, counted) = match self.lookup(shard, key, Arc::clone) {
            Some(core) => (core, true),
            None => self.enter_new(key, shard),
        };
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
