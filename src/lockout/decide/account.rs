//! Per-account lockouts: the handler names the account a login targets
//! ([`AccountGuard::check`]), failures count against the account as well as
//! the address, and a locked account refuses every client that has not
//! logged into it lately — never the owner's own recent addresses.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use std::collections::HashMap;
use std::sync::PoisonError;

use super::Shared;
use crate::observe::LockoutEvent;
use crate::rate_limit::RateKey;
use crate::reject::{GrpcCode, Head, Refusal, RefusalKind, Responder};

/// Clients an account remembers at once (its owner's devices and networks).
const KNOWN_CLIENTS: usize = 4;

/// The key of `account`: a digest in a space of its own (no address or
/// header value starts with a NUL byte).
fn account_key(account: &str) -> RateKey {
    let mut text = Vec::with_capacity(account.len() + 9);
    text.extend_from_slice(b"\0account\0");
    text.extend_from_slice(account.as_bytes());
    RateKey::text(text)
}

type Render = Box<dyn Fn(&Refusal<'_>) -> Response<Bytes> + Send + Sync>;

struct Inner {
    shared: Arc<Shared>,
    /// The client's key (`None`: the request had none).
    client: Option<RateKey>,
    /// The account the handler named, first one only.
    account: OnceLock<RateKey>,
    render: Render,
}

/// In the request extensions of a lockout built with
/// [`per_account(true)`](crate::lockout::LockoutBuilder::per_account) (axum:
/// `Extension<AccountGuard>`): the handler names the account the login
/// targets with [`check`](Self::check), before it checks the password.
///
/// A failure of that request then counts against the account as well as
/// against the client's address; `failures` of them within the window lock
/// the account out, with the same doubling back-off. A locked account
/// refuses every client that has not logged into it within
/// [`known_clients_for`](crate::lockout::LockoutBuilder::known_clients_for)
/// (30 days by default; the 4 latest are remembered): an attacker can keep
/// an account locked against new addresses, never against the addresses its
/// owner logged in from. A request marked
/// [`LoginSucceeded`](super::LoginSucceeded) clears the account's failures
/// and makes its client known to the account — on every replica when the
/// lockout is shared through Redis (a replica learning the account's
/// lockout from Redis learns its known clients with it).
#[derive(Clone)]
pub struct AccountGuard {
    inner: Arc<Inner>,
}

impl fmt::Debug for AccountGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountGuard")
            .field("named", &self.inner.account.get().is_some())
            .finish_non_exhaustive()
    }
}

impl AccountGuard {
    pub(super) fn new<R: Responder>(
        shared: &Arc<Shared>,
        client: Option<RateKey>,
        responder: &R,
        parts: &http::request::Parts,
    ) -> Self {
        let head = Head::of(parts);
        let responder = responder.clone();
        Self {
            inner: Arc::new(Inner {
                shared: Arc::clone(shared),
                client,
                account: OnceLock::new(),
                render: Box::new(move |refusal| head.respond(&responder, refusal)),
            }),
        }
    }

    /// Names the account this login targets (the first name counts; later
    /// calls check that one again) and checks it: `Err` while the account
    /// is locked out and this client has not logged into it lately.
    ///
    /// # Errors
    /// [`AccountLockedOut`], whose
    /// [`into_http_response`](AccountLockedOut::into_http_response) is the
    /// standard refusal (429, `Retry-After`, problem type
    /// `abnormal-usage-detected`, `reason: "account_locked_out"`).
    pub fn check(&self, account: &str) -> Result<(), AccountLockedOut> {
        let inner = &self.inner;
        let key = inner.account.get_or_init(|| account_key(account));
        let Some(left) = inner.shared.account_locked_for(key, inner.client.as_ref()) else {
            return Ok(());
        };
        inner.shared.metrics.event(LockoutEvent::Refused);
        tracing::debug!(outcome = "account_locked_out", "tollgate: login refused");
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(left));
        let refusal = Refusal::new(
            RefusalKind::AbnormalUsage,
            StatusCode::TOO_MANY_REQUESTS,
            GrpcCode::ResourceExhausted,
            "account_locked_out",
            "too many failed logins to this account; retry later",
        )
        .with_headers(headers);
        Err(AccountLockedOut {
            retry_after: Duration::from_secs(left),
            response: Box::new((inner.render)(&refusal)),
        })
    }

    /// The request ended: counts a failure against the named account, or
    /// clears it and remembers the client on a success.
    pub(super) fn concluded(self, shared: &Arc<Shared>, succeeded: bool, failed: bool) {
        let Some(account) = self.inner.account.get() else {
            return;
        };
        if succeeded {
            shared.clear(account);
            if let Some(client) = &self.inner.client {
                shared.know(account, client);
            }
        } else if failed {
            shared.failed(account.clone(), None);
        }
    }
}

impl Shared {
    /// Seconds left of `account`'s lockout, unless `client` logged into it
    /// lately.
    fn account_locked_for(&self, account: &RateKey, client: Option<&RateKey>) -> Option<u64> {
        let now = self.clock.unix_now();
        let until = self.records().get(account)?.locked_until;
        if until <= now {
            return None;
        }
        let known = client.is_some_and(|client| {
            let client = client.to_store_key();
            self.known_clients().get(account).is_some_and(|known| {
                known
                    .iter()
                    .any(|(known, until)| *known == client && *until > now)
            })
        });
        (!known).then(|| until - now)
    }

    fn known_clients(&self) -> std::sync::MutexGuard<'_, HashMap<RateKey, Vec<(String, u64)>>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers that `client` logged into `account` (its latest
    /// [`KNOWN_CLIENTS`], each for `known_for`), here and, when the replicas
    /// share their counts, in Redis for the others.
    fn know(&self, account: &RateKey, client: &RateKey) {
        let now = self.clock.unix_now();
        let client = client.to_store_key();
        #[cfg(feature = "redis")]
        if let Some(store) = &self.store
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let store = store.clone();
            let (name, account) = (Arc::clone(&self.name), account.to_store_key());
            let known_ms = self.settings.known_for.saturating_mul(1000);
            let client = client.clone();
            runtime.spawn(async move {
                let known = store
                    .inner
                    .know(&name, &account, &client, known_ms, KNOWN_CLIENTS)
                    .await;
                if let Err(why) = known
                    && store.inner.warn.due()
                {
                    tracing::warn!(error = %why, "tollgate: the lockout could not share a login in Redis");
                }
            });
        }
        self.remember(
            account,
            client,
            now.saturating_add(self.settings.known_for),
            now,
        );
    }

    /// What Redis said of a locked account: the clients known to it.
    #[cfg(feature = "redis")]
    pub(super) fn learned_known(&self, account: &RateKey, known: Vec<(String, u64)>) {
        let now = self.clock.unix_now();
        for (client, until_ms) in known {
            self.remember(account, client, until_ms / 1000, now);
        }
    }

    /// `client` is known to `account` until `until`. At most `max_keys`
    /// accounts are remembered: when full, those whose clients all expired
    /// make room, else it is not remembered.
    fn remember(&self, account: &RateKey, client: String, until: u64, now: u64) {
        let mut known = self.known_clients();
        if !known.contains_key(account) && known.len() >= self.settings.max_keys {
            known.retain(|_, clients| clients.iter().any(|(_, until)| *until > now));
            if known.len() >= self.settings.max_keys {
                return;
            }
        }
        let clients = known.entry(account.clone()).or_default();
        clients.retain(|(known, until)| *known != client && *until > now);
        if clients.len() >= KNOWN_CLIENTS {
            // The one that logged in longest ago makes room.
            clients.remove(0);
        }
        clients.push((client, until));
    }
}

/// An [`AccountGuard::check`] refused: the account is locked out for this
/// client.
pub struct AccountLockedOut {
    retry_after: Duration,
    /// Boxed: the error stays small on the success path.
    response: Box<Response<Bytes>>,
}

impl fmt::Debug for AccountLockedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountLockedOut")
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for AccountLockedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too many failed logins to this account")
    }
}

impl std::error::Error for AccountLockedOut {}

impl AccountLockedOut {
    /// How long the lockout lasts.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The standard refusal (429, `Retry-After`, problem type
    /// `abnormal-usage-detected`; gRPC `RESOURCE_EXHAUSTED`). With feature
    /// `axum`, a handler can return the error itself (`IntoResponse`).
    pub fn into_http_response(self) -> Response<Bytes> {
        *self.response
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for AccountLockedOut {
    fn into_response(self) -> axum_core::response::Response {
        self.response.map(axum_core::body::Body::from)
    }
}
