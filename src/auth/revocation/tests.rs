//! Tests of the local set.

use super::*;
use std::sync::atomic::AtomicU64;

fn at(now: &Arc<AtomicU64>) -> Revocations {
    let clock = Arc::clone(now);
    Revocations::new()
        .max_token_lifetime(Duration::from_secs(900))
        .leeway(Duration::from_secs(60))
        .clock(move || clock.load(Ordering::SeqCst))
}

#[test]
fn a_revoked_jti_is_refused_until_its_token_expires() {
    let now = Arc::new(AtomicU64::new(1_000));
    let r = at(&now);
    assert!(!r.is_revoked(None, Some("alice"), Some("t1"), Some(900), 1_000));
    r.revoke_token("t1", 1_500);
    assert!(r.is_revoked(None, Some("alice"), Some("t1"), Some(900), 1_000));
    assert!(!r.is_revoked(None, Some("alice"), Some("t2"), Some(900), 1_000));
    // Kept through exp + leeway, then dropped by the clean-up.
    assert!(r.is_revoked(None, None, Some("t1"), None, 1_559));
    assert!(!r.is_revoked(None, None, Some("t1"), None, 1_560));
    now.store(1_560, Ordering::SeqCst);
    r.cleanup();
    assert_eq!(r.len(), 0);
}

#[test]
fn a_revoked_subject_refuses_older_tokens_of_that_issuer_only() {
    let now = Arc::new(AtomicU64::new(1_000));
    let r = at(&now);
    r.revoke_subject(Some("https://a"), "alice", 1_000);
    let revoked = |iss, sub, iat| r.is_revoked(iss, Some(sub), None, iat, 1_000);
    assert!(revoked(Some("https://a"), "alice", Some(999)));
    assert!(
        revoked(Some("https://a"), "alice", Some(1_000)),
        "issued in the second of the cut: revoked (issue 26)"
    );
    assert!(
        !revoked(Some("https://a"), "alice", Some(1_001)),
        "issued a second later: valid"
    );
    assert!(
        revoked(Some("https://a"), "alice", None),
        "unknown issue time: refused"
    );
    assert!(
        !revoked(Some("https://b"), "alice", Some(999)),
        "another issuer"
    );
    assert!(
        !revoked(Some("https://a"), "bob", Some(999)),
        "another subject"
    );
    // A later revocation covers more; an earlier one does not undo it.
    r.revoke_subject(Some("https://a"), "alice", 1_100);
    r.revoke_subject(Some("https://a"), "alice", 500);
    assert!(revoked(Some("https://a"), "alice", Some(1_050)));
    assert_eq!(r.len(), 1);
    // Kept for max lifetime + leeway after the latest cut-off.
    assert!(r.is_revoked(Some("https://a"), Some("alice"), None, Some(1), 2_059));
    assert!(!r.is_revoked(Some("https://a"), Some("alice"), None, Some(1), 2_060));
}

#[test]
fn memory_is_bounded_by_time() {
    let now = Arc::new(AtomicU64::new(0));
    let r = at(&now);
    for i in 0..10_000 {
        now.store(i, Ordering::SeqCst);
        r.revoke_token(&format!("t{i}"), i + 10);
    }
    // Every entry lives 70 s (exp + leeway); a revocation cleans one of
    // 16 shards, so a shard is visited every 16 revocations: what is
    // held stays near 70 + 16 entries, not 10,000.
    assert!(r.len() < 200, "{}", r.len());
}

#[test]
fn identity_helpers_need_what_they_revoke_by() {
    let r = Revocations::new();
    let bare = Identity::new(None, None, crate::identity::CredentialSource::Cookie);
    assert!(!r.revoke_token_of(&bare));
    assert!(!r.revoke_subject_of(&bare, 10));
    assert!(r.is_empty());
}
