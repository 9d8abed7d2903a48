//! A value derived from parameter tensors for inference (a packed weight, a folded
//! convolution), made on first use and made again whenever any source tensor changes.
//!
//! A source "changes" when its version counter moves (an in-place write such as a
//! checkpoint load's `copy_`) or its storage moves (a device or dtype move replaces the
//! data pointer). The parameters themselves stay the `state_dict` entries; the derived
//! copy is only a cache next to them.
use std::sync::Mutex;
use tch::Tensor;

/// What a derived value was made from: (version, data pointer) of each source, with
/// `(-1, 0)` for an absent optional tensor.
type Key = Vec<(i64, usize)>;

fn key_of(sources: &[Option<&Tensor>]) -> Option<Key> {
    sources
        .iter()
        .map(|t| match t {
            Some(t) => Some((t.f_internal_version().ok()?, t.data_ptr() as usize)),
            None => Some((-1, 0)),
        })
        .collect()
}

/// A cache of one value derived from a fixed list of source tensors.
pub struct Derived<T> {
    slot: Mutex<Option<(Key, T)>>,
}

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Self {
            slot: Mutex::new(None),
        }
    }
}

impl<T> std::fmt::Debug for Derived<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready = self.is_ready();
        f.debug_struct("Derived").field("ready", &ready).finish()
    }
}

impl<T> Derived<T> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the value derived from `sources` through `read`, deriving it first with
    /// `derive` when the cache is empty or any source has changed since. `None` when a
    /// source's version cannot be read or `derive` declines (the caller then takes its
    /// plain path). The lock is held only while deriving and reading, so `read` should
    /// take cheap handles (`Tensor::shallow_clone`) and the caller compute outside it.
    pub fn get<R>(
        &self,
        sources: &[Option<&Tensor>],
        derive: impl FnOnce() -> Option<T>,
        read: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        self.get_keyed(key_of(sources)?, derive, read)
    }

    fn get_keyed<R>(
        &self,
        key: Key,
        derive: impl FnOnce() -> Option<T>,
        read: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(&*slot, Some((k, _)) if *k == key) {
            *slot = Some((key, derive()?));
        }
        slot.as_ref().map(|(_, value)| read(value))
    }

    /// As [`Self::get`], for a value that also depends on a plain number (the row count
    /// MKL packs a weight for): a different `param` derives the value again.
    pub fn get_for<R>(
        &self,
        param: i64,
        sources: &[Option<&Tensor>],
        derive: impl FnOnce() -> Option<T>,
        read: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        let mut key = key_of(sources)?;
        key.push((param, usize::MAX));
        self.get_keyed(key, derive, read)
    }

    /// Whether a derived value is cached (for tests).
    pub fn is_ready(&self) -> bool {
        self.slot.lock().is_ok_and(|s| s.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn derives_once_and_again_after_a_change() {
        let w = Tensor::ones([3], (Kind::Float, Device::Cpu));
        let cache: Derived<f64> = Derived::new();
        let mut calls = 0;
        let mut sum = |cache: &Derived<f64>, w: &Tensor| {
            cache
                .get(
                    &[Some(w), None],
                    || {
                        calls += 1;
                        Some(w.sum(Kind::Double).double_value(&[]))
                    },
                    |v| *v,
                )
                .unwrap()
        };
        assert_eq!(sum(&cache, &w), 3.0);
        assert_eq!(sum(&cache, &w), 3.0);
        // an in-place write (a checkpoint load) moves the version counter
        let _ = w.shallow_clone().fill_(2.0);
        assert_eq!(sum(&cache, &w), 6.0);
        // a new storage (a device or dtype move) moves the data pointer
        let moved = w.copy();
        assert_eq!(sum(&cache, &moved), 6.0);
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_declined_derivation_leaves_the_cache_empty() {
        let w = Tensor::ones([1], (Kind::Float, Device::Cpu));
        let cache: Derived<()> = Derived::new();
        assert!(cache.get(&[Some(&w)], || None, |_| ()).is_none());
        assert!(!cache.is_ready());
    }
}
