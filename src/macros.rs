//! Small macros shared by the layers.

/// `get_ref`, `get_mut` and `into_inner` for a service whose inner service is
/// its `inner` field (tower-http's convention).
macro_rules! inner_accessors {
    ($inner:ident) => {
        /// The inner service.
        pub fn get_ref(&self) -> &$inner {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut $inner {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> $inner {
            self.inner
        }
    };
}

pub(crate) use inner_accessors;
