//! Sliding refresh of cookie sessions: see [`Refresh`].

mod mint;
mod once;
mod settings;
mod signing;

pub(crate) use mint::{Context, Due, Refresher};
pub use settings::{DEFAULT_MAX_SESSION, DEFAULT_REFRESHED_CAPACITY, Refresh, SameSite};
pub use signing::SigningKey;
