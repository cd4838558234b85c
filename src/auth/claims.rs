use std::ops::Deref;
use std::sync::Arc;

/// The verified claims of the request's token, as the service's own type.
///
/// Inserted into the request extensions by [`JwtAuthLayer`](super::JwtAuthLayer)
/// when a token verifies. Shared, not copied: cloning is an `Arc` clone. With
/// the `axum` feature, `Claims<T>` and `Option<Claims<T>>` are extractors;
/// tonic handlers read `request.extensions().get::<Claims<T>>()`.
#[derive(Debug)]
pub struct Claims<T>(pub Arc<T>);

impl<T> Clone for Claims<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Deref for Claims<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
