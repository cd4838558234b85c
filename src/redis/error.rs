//! Naming a redis-rs error for logs and error messages.

/// A redis-rs error's category, without any reply content.
pub(crate) fn kind_name(error: &::redis::RedisError) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connection_dropped() || error.is_connection_refusal() {
        "connection lost".into()
    } else {
        format!("{:?}", error.kind())
    }
}
