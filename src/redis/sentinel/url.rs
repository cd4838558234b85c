//! The Sentinel URL: `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service[/db]`,
//! with `?sentinel_username=…&sentinel_password=…` for Sentinels that ask for
//! a password of their own.

use std::fmt;

use ::redis::ConnectionAddr;
use ::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};

/// A Sentinel's port when the URL gives none.
const DEFAULT_PORT: u16 = 26_379;

/// The form, for error messages.
const FORM: &str = "a Sentinel URL is \
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]";

/// What a Sentinel URL says.
#[derive(PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// The Sentinels, as host and port.
    pub(crate) sentinels: Vec<(String, u16)>,
    /// The name the Sentinels monitor the primary under (`sentinel monitor
    /// <name> …`).
    pub(crate) service: String,
    /// The database on the primary.
    pub(crate) db: i64,
    /// ACL user and password of the primary (and its replicas).
    username: Option<String>,
    password: Option<String>,
    /// ACL user and password of the Sentinels themselves.
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
}

impl fmt::Debug for SentinelUrl {
    // Passwords are not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelUrl")
            .field("sentinels", &self.sentinels)
            .field("service", &self.service)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl SentinelUrl {
    /// redis-rs's Sentinel client for the primary this URL names.
    pub(crate) fn client(&self) -> Result<SentinelClient, String> {
        let addrs = self
            .sentinels
            .iter()
            .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder =
            SentinelClientBuilder::new(addrs, &self.service, SentinelServerType::Master)
                .map_err(|e| format!("bad Sentinel settings: {e}"))?
                .set_client_to_redis_db(self.db);
        if let Some(username) = &self.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(username) = &self.sentinel_username {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        builder
            .build()
            .map_err(|e| format!("bad Sentinel settings: {e}"))
    }
}

/// Reads a Sentinel URL; `Ok(None)` when `url` is not one (its scheme does
/// not end in `+sentinel`).
///
/// # Errors
/// What is wrong, never quoting the user information or a parameter's value.
pub(crate) fn parse(url: &str) -> Result<Option<SentinelUrl>, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let Some(base) = scheme.strip_suffix("+sentinel") else {
        return Ok(None);
    };
    match base {
        "redis" | "valkey" => {}
        "rediss" | "valkeys" => {
            return Err(format!(
                "{scheme}: tollgate's Redis client is built without TLS; {FORM}"
            ));
        }
        _ => return Err(format!("unsupported scheme {scheme:?}: {FORM}")),
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if tail.contains('#') {
        return Err(format!("a Sentinel URL takes no fragment (#...): {FORM}"));
    }
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let (service, db) = parse_path(path)?;
    let sentinels = hosts
        .split(',')
        .map(|host| parse_host(host.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            let user = Some(decode(user, "the user name")?).filter(|u| !u.is_empty());
            let password = password.map(|p| decode(p, "the password")).transpose()?;
            (user, password)
        }
    };
    let mut url = SentinelUrl {
        sentinels,
        service,
        db,
        username,
        password,
        sentinel_username: None,
        sentinel_password: None,
    };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "sentinel_username" => url.sentinel_username = Some(decode(value, name)?),
            "sentinel_password" => url.sentinel_password = Some(decode(value, name)?),
            _ => {
                return Err(format!(
                    "unknown parameter {:?} in a Sentinel URL: only sentinel_username and \
                     sentinel_password are read",
                    name.chars().take(40).collect::<String>()
                ));
            }
        }
    }
    Ok(Some(url))
}

/// `/service[/db][/]`.
fn parse_path(path: &str) -> Result<(String, i64), String> {
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
    let service = decode(segments.next().unwrap_or_default(), "the service name")?;
    if service.is_empty() {
        return Err(format!(
            "a Sentinel URL names the monitored primary after the hosts \
             (redis+sentinel://host:26379/mymaster): {FORM}"
        ));
    }
    let db = match segments.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or_else(|| {
                "the database after the service name must be a number, e.g. \
                 redis+sentinel://host:26379/mymaster/2"
                    .to_owned()
            })?,
    };
    if segments.any(|rest| !rest.is_empty()) {
        return Err(format!("a Sentinel URL has too many path segments: {FORM}"));
    }
    Ok((service, db))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn parse_host(host: &str) -> Result<(String, u16), String> {
    if host.is_empty() {
        return Err(format!("a Sentinel URL lists an empty host: {FORM}"));
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let Some((name, after)) = v6.split_once(']') else {
            return Err(format!("unclosed [ in Sentinel address {host:?}"));
        };
        match after {
            "" => (name, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (name, Some(port)),
                None => return Err(format!("bad Sentinel address {host:?}")),
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if name.is_empty() {
        return Err(format!("a Sentinel URL lists an empty host: {FORM}"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("bad port in Sentinel address {host:?}"))?,
    };
    Ok((name.to_owned(), port))
}

/// Percent-decodes `text` (`what` names it in the error, never its value).
fn decode(text: &str, what: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {what} of a Sentinel URL"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{what} of a Sentinel URL is not UTF-8"))
}

#[cfg(test)]
mod tests {

    use super::*;

    fn hosts(url: &SentinelUrl) -> Vec<(&str, u16)> {
        url.sentinels
            .iter()
            .map(|(h, p)| (h.as_str(), *p))
            .collect()
    }

    #[test]
    fn other_schemes_are_not_sentinel_urls() {
        for url in [
            "redis://a:1",
            "redis+cluster://a:1,b:2",
            "unix:///x",
            "not a url",
        ] {
            assert_eq!(parse(url).unwrap(), None, "{url}");
        }
    }

    #[test]
    fn hosts_service_database_and_credentials_are_read() {
        let url = parse("redis+sentinel://s1:26380, s2 ,[::1]:5000/mymaster")
            .unwrap()
            .unwrap();
        assert_eq!(hosts(&url), [("s1", 26380), ("s2", 26379), ("::1", 5000)]);
        assert_eq!(url.service, "mymaster");
        assert_eq!(url.db, 0);
        assert_eq!(url.password, None);

        let url = parse(
            "valkey+sentinel://app:p%40ss%2Fw@s1/my%20primary/3/\
             ?sentinel_username=watch&sentinel_password=s%26cret",
        )
        .unwrap()
        .unwrap();
        assert_eq!(url.service, "my primary");
        assert_eq!(url.db, 3);
        assert_eq!(url.username.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("p@ss/w"));
        assert_eq!(url.sentinel_username.as_deref(), Some("watch"));
        assert_eq!(url.sentinel_password.as_deref(), Some("s&cret"));

        let url = parse("redis+sentinel://:only-pw@[fe80::1]/m")
            .unwrap()
            .unwrap();
        assert_eq!(url.username, None);
        assert_eq!(url.password.as_deref(), Some("only-pw"));
        assert_eq!(hosts(&url), [("fe80::1", 26379)]);
        assert!(url.client().is_ok());
    }

    #[test]
    fn bad_urls_are_refused_with_the_fix_and_without_secrets() {
        for (url, says) in [
            ("redis+sentinel://s1:26379", "mymaster"),
            ("redis+sentinel://s1:26379/", "mymaster"),
            ("redis+sentinel://s1,,s2/m", "empty host"),
            ("redis+sentinel:///m", "empty host"),
            ("redis+sentinel://s1:0/m", "bad port"),
            ("redis+sentinel://s1:x/m", "bad port"),
            ("redis+sentinel://[::1/m", "unclosed"),
            ("redis+sentinel://s1/m/zero", "must be a number"),
            ("redis+sentinel://s1/m/-1", "must be a number"),
            ("redis+sentinel://s1/m/1/x", "too many"),
            ("redis+sentinel://s1/m#frag", "fragment"),
            ("rediss+sentinel://s1/m", "without TLS"),
            ("http+sentinel://s1/m", "unsupported scheme"),
            (
                "redis+sentinel://u:p%zz@s1/m",
                "percent-encoding in the password",
            ),
            (
                "redis+sentinel://u:hunter2@s1/m?password=hunter3",
                "unknown parameter",
            ),
        ] {
            let err = parse(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("hunter"), "{url}: {err}");
        }
    }

    #[test]
    fn debug_hides_passwords() {
        let url = parse("redis+sentinel://u:hunter2@s1/m?sentinel_password=hunter3")
            .unwrap()
            .unwrap();
        let debug = format!("{url:?}");
        assert!(!debug.contains("hunter"), "{debug}");
        assert!(debug.contains("\"m\""), "{debug}");
    }
}
