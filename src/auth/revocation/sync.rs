//! The background task of a shared set: sends revocations made here as they
//! come, applies those published by other replicas, and every sync interval
//! checks it has seen them all (reading the set again if not), reconnects
//! pub/sub (also once Sentinel names another primary) and drops expired
//! entries. It holds the set only weakly and ends once every clone of it is
//! dropped.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use ::redis::Msg;
use ::redis::aio::PubSubStream;
use futures_core::Stream;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{Inner, Revocations};

/// Expired local entries are removed this often.
const CLEANUP_EVERY: Duration = Duration::from_secs(1);

enum Event {
    Tick,
    Queued,
    Message(Option<Msg>),
}

/// Starts the task of a set just shared.
pub(super) fn spawn(
    runtime: &Handle,
    set: Weak<Inner>,
    wake: Arc<Notify>,
    stream: Option<PubSubStream>,
    interval: Duration,
) {
    runtime.spawn(run(set, wake, stream, interval));
}

async fn run(
    set: Weak<Inner>,
    wake: Arc<Notify>,
    mut stream: Option<PubSubStream>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate; `share` has just read everything.
    ticker.reset();
    let mut last_cleanup = Instant::now();
    loop {
        let event = next(&mut ticker, &wake, &mut stream).await;
        // Held only while handling the event, never while waiting.
        let Some(inner) = set.upgrade() else {
            return;
        };
        let set = Revocations { inner };
        let Some(link) = set.inner.link.get() else {
            return;
        };
        match event {
            Event::Queued => {
                if let Err(e) = link.push(&set).await {
                    link.failed(&e);
                }
            }
            Event::Message(Some(message)) => link.receive(&set, message.get_payload_bytes()),
            Event::Message(None) => {
                stream = None;
                link.failed(&super::RevocationSyncError::lost("subscribe"));
            }
            Event::Tick => {
                let mut ok = true;
                if let Err(e) = link.push(&set).await {
                    link.failed(&e);
                    ok = false;
                }
                if let Err(e) = link.check(&set).await {
                    link.failed(&e);
                    ok = false;
                }
                if link.pubsub && (stream.is_none() || link.subscribed_elsewhere()) {
                    match link.subscribe().await {
                        // Messages missed meanwhile: the next check reads them.
                        Ok(subscribed) => stream = Some(subscribed),
                        Err(e) => {
                            link.failed(&e);
                            ok = false;
                        }
                    }
                }
                if ok {
                    link.recovered();
                }
                if last_cleanup.elapsed() >= CLEANUP_EVERY {
                    set.cleanup();
                    last_cleanup = Instant::now();
                }
            }
        }
    }
}

/// Waits for the next tick, queued revocation or message, in that order of
/// preference.
async fn next(ticker: &mut Interval, wake: &Notify, stream: &mut Option<PubSubStream>) -> Event {
    let mut queued = pin!(wake.notified());
    std::future::poll_fn(|cx| {
        if ticker.poll_tick(cx).is_ready() {
            return Poll::Ready(Event::Tick);
        }
        if queued.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Queued);
        }
        if let Some(stream) = stream.as_mut()
            && let Poll::Ready(message) = Pin::new(stream).poll_next(cx)
        {
            return Poll::Ready(Event::Message(message));
        }
        Poll::Pending
    })
    .await
}
