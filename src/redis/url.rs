//! What a Redis URL points at: one server (or any node of a cluster, asked
//! at connect), a cluster's seed nodes (`redis+cluster://`, or several hosts
//! in a `redis://` URL) or the primary some Sentinels name
//! (`redis+sentinel://`).

use super::sentinel::{self, SentinelUrl};
use crate::error::ConfigError;

/// Where a URL points.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One address: a standalone server or any node of a cluster (asked).
    Detect(String),
    /// Seed nodes of a cluster, as one URL each.
    Cluster(Vec<String>),
    /// The primary some Sentinels name.
    Sentinel(SentinelUrl),
}

/// Reads `redis://host:port/db` (one node: standalone or cluster, detected),
/// `redis+cluster://host:port[,host:port…]` (a cluster, from its seeds),
/// `redis://host:port,host:port` (several seeds: a cluster) and
/// `redis+sentinel://host:port[,host:port…]/service[/db]` (the primary
/// Sentinel names). Other schemes (`unix://`, `redis+unix://`,
/// `rediss://…`) go to redis-rs as they are.
///
/// # Errors
/// A cluster URL with an empty host in its list; a Sentinel URL that does
/// not parse.
pub(crate) fn parse_target(url: &str) -> Result<Target, ConfigError> {
    if let Some(sentinel) = sentinel::parse(url)
        .map_err(|e| ConfigError::new("redis", format!("bad Redis Sentinel URL: {e}")))?
    {
        return Ok(Target::Sentinel(sentinel));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(Target::Detect(url.to_owned()));
    };
    let (base, forced) = match scheme.strip_suffix("+cluster") {
        Some(base) => (base, true),
        None => (scheme, false),
    };
    if !matches!(base, "redis" | "rediss" | "valkey" | "valkeys") {
        if forced {
            return Err(ConfigError::new(
                "redis",
                format!(
                    "unsupported scheme {scheme:?}: a cluster URL is redis+cluster://host:port[,host:port...]"
                ),
            ));
        }
        return Ok(Target::Detect(url.to_owned()));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.len() == 1 && !forced {
        return Ok(Target::Detect(url.to_owned()));
    }
    if hosts.iter().any(|host| host.trim().is_empty()) {
        return Err(ConfigError::new(
            "redis",
            "a cluster URL lists an empty host: give host:port[,host:port...]",
        ));
    }
    let seeds = hosts
        .iter()
        .map(|host| match userinfo {
            Some(userinfo) => format!("{base}://{userinfo}@{}{tail}", host.trim()),
            None => format!("{base}://{}{tail}", host.trim()),
        })
        .collect();
    Ok(Target::Cluster(seeds))
}

#[cfg(test)]
mod tests {

    use super::*;

    fn cluster(seeds: &[&str]) -> Target {
        Target::Cluster(seeds.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn one_host_is_detected_at_connect() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://:secret@redis:6379/2",
            "rediss://redis",
            "unix:///run/redis.sock",
            "redis+unix:///run/redis.sock",
            "not a url",
        ] {
            assert_eq!(parse_target(url).unwrap(), Target::Detect(url.to_owned()));
        }
    }

    #[test]
    fn cluster_urls_become_one_seed_url_each() {
        assert_eq!(
            parse_target("redis+cluster://10.0.0.1:7000").unwrap(),
            cluster(&["redis://10.0.0.1:7000"])
        );
        assert_eq!(
            parse_target("redis+cluster://user:pw@a:7000,b:7001/?protocol=resp2").unwrap(),
            cluster(&[
                "redis://user:pw@a:7000/?protocol=resp2",
                "redis://user:pw@b:7001/?protocol=resp2"
            ])
        );
        assert_eq!(
            parse_target("redis://a:7000, b:7001,[::1]:7002").unwrap(),
            cluster(&["redis://a:7000", "redis://b:7001", "redis://[::1]:7002"])
        );
        assert_eq!(
            parse_target("rediss+cluster://a,b").unwrap(),
            cluster(&["rediss://a", "rediss://b"])
        );
    }

    #[test]
    fn bad_cluster_urls_are_refused_with_the_fix() {
        for url in [
            "redis+cluster://a:1,,b:2",
            "redis://a:1,",
            "redis+cluster://",
            "unix+cluster:///x",
        ] {
            let err = parse_target(url).unwrap_err();
            assert_eq!(err.setting(), "redis", "{url}");
            assert!(err.reason().contains("host:port"), "{url}: {err}");
        }
    }

    #[test]
    fn sentinel_urls_name_their_sentinels_and_service() {
        let Target::Sentinel(url) =
            parse_target("redis+sentinel://:pw@a,b:26380/mymaster/2").unwrap()
        else {
            panic!("not a Sentinel target");
        };
        assert_eq!(
            url.sentinels,
            [("a".to_owned(), 26_379), ("b".to_owned(), 26_380)]
        );
        assert_eq!((url.service.as_str(), url.db), ("mymaster", 2));
        let err = parse_target("redis+sentinel://:hunter2@a,b").unwrap_err();
        assert_eq!(err.setting(), "redis");
        assert!(err.reason().contains("mymaster"), "{err}");
        assert!(!err.reason().contains("hunter2"), "{err}");
    }
}
