//! Error text for logs and recovery status, shared by the examples.

/// An error with its sources ("error sending request: ... Connection
/// refused"), where `Display` alone shows only the outermost layer.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
