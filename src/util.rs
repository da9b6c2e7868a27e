//! Small shared pieces.

/// Cuts `text` to at most `max` bytes, on a character boundary.
#[cfg(any(feature = "recovery", feature = "health"))]
pub(crate) fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Keeps a value on its own cache lines (two, against adjacent-line
/// prefetch), so that threads updating it do not slow readers of neighbours.
#[cfg(any(feature = "circuit-breaker", feature = "drain"))]
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// Stripes of a striped counter: enough for the machine's threads to write
/// mostly their own, at most 8; a power of two.
#[cfg(feature = "circuit-breaker")]
pub(crate) fn stripes() -> usize {
    // Model checking needs the same cells touched in every execution.
    if cfg!(tower_recovery_loom) {
        return 1;
    }
    static STRIPES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *STRIPES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
            .next_power_of_two()
    })
}

/// This thread's stripe: threads are numbered as they first ask, so the
/// first [`stripes`] threads to record each get a stripe of their own.
#[cfg(feature = "circuit-breaker")]
#[inline]
pub(crate) fn stripe() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|stripe| {
        let mut index = stripe.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
            stripe.set(index);
        }
        index
    })
}

/// A counter that threads add to without sharing a cache line: one cell per
/// stripe, summed when read.
#[cfg(feature = "circuit-breaker")]
#[derive(Debug)]
pub(crate) struct Striped {
    cells: Box<[Padded<crate::sync::atomic::AtomicU64>]>,
}

#[cfg(feature = "circuit-breaker")]
impl Striped {
    pub(crate) fn new() -> Self {
        Self {
            cells: (0..stripes())
                .map(|_| Padded(crate::sync::atomic::AtomicU64::new(0)))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        let cell = &self.cells[stripe() & (self.cells.len() - 1)];
        cell.0.fetch_add(n, crate::sync::atomic::Ordering::Relaxed);
    }

    /// Adds one, ordered before the loads that follow it (the reader's half
    /// of a store-buffering pair: see the keyed registry's eviction).
    #[inline]
    pub(crate) fn enter(&self) {
        let cell = &self.cells[stripe() & (self.cells.len() - 1)];
        cell.0.fetch_add(1, crate::sync::atomic::Ordering::SeqCst);
    }

    /// Takes one away (from this thread's cell: cells wrap, their sum does
    /// not), after everything this thread did before.
    #[inline]
    pub(crate) fn leave(&self) {
        let cell = &self.cells[stripe() & (self.cells.len() - 1)];
        cell.0.fetch_sub(1, crate::sync::atomic::Ordering::Release);
    }

    /// The sum of [`enter`](Self::enter)s less [`leave`](Self::leave)s, each
    /// cell read by a read-modify-write (the latest value, ordered after
    /// what came before it).
    pub(crate) fn net(&self) -> u64 {
        self.cells.iter().fold(0u64, |sum, c| {
            sum.wrapping_add(c.0.fetch_add(0, crate::sync::atomic::Ordering::SeqCst))
        })
    }

    pub(crate) fn sum(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c.0.load(crate::sync::atomic::Ordering::Acquire))
            .sum()
    }
}

/// `time` as RFC 3339 in UTC, to the second (`2026-11-29T19:41:20Z`).
#[cfg(any(feature = "admin", feature = "webhook"))]
pub(crate) fn rfc3339(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}
