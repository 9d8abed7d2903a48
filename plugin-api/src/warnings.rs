//! Warnings a plugin raises while it builds an entry, delivered to the user by the host.
//!
//! A plugin library carries its own copy of `tracing`, with no subscriber, so a
//! `tracing::warn!` inside a plugin reaches nobody. [`warn!`](crate::warn) records the
//! message instead (and still logs it); the SDK attaches what an entry's build recorded
//! to the built module's [`Module::meta`](crate::Module::meta) under [`META_KEY`], and the
//! host prints each one once, after that build, naming the entry. No ABI change: `meta`
//! is JSON.
use serde_json::{Map, Value};
use std::cell::RefCell;

/// The `meta` key holding the build's warnings (a list of strings).
pub const META_KEY: &str = "warnings";

thread_local! {
    static PENDING: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Records a warning for the build under way on this thread (and logs it).
pub fn warn(message: impl Into<String>) {
    let message = message.into();
    tracing::warn!("{message}");
    PENDING.with(|p| p.borrow_mut().push(message));
}

/// Runs `f` with its own list of warnings (builds nest: a factory builds its parts),
/// returning its result and what it recorded.
pub(crate) fn collect<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let outer = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let out = f();
    let mine = PENDING.with(|p| std::mem::replace(&mut *p.borrow_mut(), outer));
    (out, mine)
}

/// The warnings a module's `meta` carries.
pub fn from_meta(meta: &Map<String, Value>) -> Vec<String> {
    meta.get(META_KEY)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Records a warning, `format!`-style, for the host to print after the build; see the
/// [module docs](crate::warnings).
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::warnings::warn(::std::format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_builds_keep_their_own_warnings() {
        let (inner, outer) = collect(|| {
            warn("outer one");
            let ((), inner) = collect(|| warn("inner"));
            warn("outer two");
            inner
        });
        assert_eq!(inner, vec!["inner"]);
        assert_eq!(outer, vec!["outer one", "outer two"]);
        assert!(collect(|| ()).1.is_empty());
    }

    #[test]
    fn warnings_are_read_back_from_meta() {
        let meta = serde_json::json!({"warnings": ["a", "b"], "patch_size": 16});
        assert_eq!(from_meta(meta.as_object().unwrap()), vec!["a", "b"]);
        assert!(from_meta(&Map::new()).is_empty());
    }
}
