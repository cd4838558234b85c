//! What `INFO` says about the server's version, checked against
//! [`RedisStore::MIN_REDIS_VERSION`] (whether it is a cluster node is
//! `crate::redis::cluster_enabled`).

use super::RedisStore;
use crate::error::ConfigError;

/// A Redis version as (major, minor, patch); tuples compare in that order.
type Version = (u32, u32, u32);

/// The `redis_version` of an `INFO server` reply. `None` when the line is
/// missing or its value is not `major.minor[.patch]` (a suffix such as
/// `-rc1` is ignored).
fn server_version(info: &str) -> Option<Version> {
    let value = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))?;
    let end = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let mut parts = value[..end].split('.').map(|part| part.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().unwrap_or(Some(0))?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

fn version_text((major, minor, patch): Version) -> String {
    format!("{major}.{minor}.{patch}")
}

/// Refuses a server older than [`RedisStore::MIN_REDIS_VERSION`], or one
/// whose version cannot be read.
pub(super) fn check_server_version(info: &str) -> Result<(), ConfigError> {
    let required = version_text(RedisStore::MIN_REDIS_VERSION);
    let Some(found) = server_version(info) else {
        return Err(ConfigError::new(
            "redis",
            format!(
                "cannot read the Redis version: INFO server has no usable redis_version \
                 line; the store needs Redis {required} or newer (RedisStore::from_connection \
                 skips this check)"
            ),
        ));
    };
    if found < RedisStore::MIN_REDIS_VERSION {
        return Err(ConfigError::new(
            "redis",
            format!(
                "Redis {} is too old: the store needs Redis {required} or newer, \
                 which replicates scripts by their effects; upgrade the server",
                version_text(found)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    fn info(version: &str) -> String {
        format!(
            "# Server\r\nredis_git_sha1:00000000\r\nredis_version:{version}\r\nredis_mode:standalone\r\n"
        )
    }

    #[test]
    fn redis_version_is_read_from_info_server() {
        assert_eq!(server_version(&info("7.0.15")), Some((7, 0, 15)));
        assert_eq!(server_version(&info("7.2")), Some((7, 2, 0)));
        assert_eq!(server_version(&info("7.2.4-rc1")), Some((7, 2, 4)));
        assert_eq!(server_version("redis_version:6.2.0"), Some((6, 2, 0)));
        // Valkey reports the Redis version it is compatible with.
        assert_eq!(
            server_version("valkey_version:8.0.1\nredis_version:7.2.4\n"),
            Some((7, 2, 4))
        );
    }

    #[test]
    fn redis_version_garbage_is_unreadable_without_panicking() {
        for text in [
            String::new(),
            "# Server\r\n".to_owned(),
            "redis_version:".to_owned(),
            "redis_version".to_owned(),
            "xredis_version:7.0.0".to_owned(),
            info(""),
            info("abc"),
            info("7"),
            info("7."),
            info(".7.0"),
            info("7..0"),
            info("7.0.0.1"),
            info("-7.0.0"),
            info("+7.0.0"),
            info("99999999999.0.0"),
            info("７.0.0"),
            info("é"),
        ] {
            assert_eq!(server_version(&text), None, "{text:?}");
            let err = check_server_version(&text).unwrap_err();
            assert_eq!(err.setting(), "redis");
            assert!(err.reason().contains("5.0.0"), "{err}");
        }
    }

    #[test]
    fn redis_older_than_the_minimum_is_refused_naming_both_versions() {
        for old in ["4.0.14", "3.2.12", "2.8.24", "4.99.99"] {
            let err = check_server_version(&info(old)).unwrap_err();
            assert!(err.reason().contains(old), "{err}");
            assert!(err.reason().contains("5.0.0"), "{err}");
        }
        for new in ["5.0.0", "6.2.0", "7.0.15", "7.4.1", "8.0.0", "255.255.255"] {
            assert_eq!(check_server_version(&info(new)), Ok(()), "{new}");
        }
    }
}
