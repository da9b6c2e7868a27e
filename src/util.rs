//! Small shared pieces.

/// Keeps a value on its own cache lines (two, against adjacent-line
/// prefetch), so that threads updating it do not slow readers of neighbours.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);
