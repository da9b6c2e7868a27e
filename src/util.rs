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
