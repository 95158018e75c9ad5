//! Boxes for the large ring items — a stack hit (1.2 KiB), lock mode's captured stack
//! (7 KiB), a stack copy (and its 4–64 KiB buffer) — kept by the thread that freed them and
//! handed out again by the next decode on that thread, so that a steady stream of stacks
//! allocates nothing.
//!
//! Why: the items are boxed so that an [`Event`](crate::events::Event) stays small (it is
//! moved a few times per item), and a box is a `malloc`. Tracing `malloc` with stacks
//! system-wide, each of those was a hit of probed itself: excluded in BPF, but only after
//! the kernel took the uprobe trap.
//!
//! Per thread, bounded: with one consumer (the common case) every box comes back to the
//! thread that decodes. With consumer threads an item dealt to another thread is freed
//! there, whose pool fills up to [`KEEP`] and frees the rest, and the reading thread
//! allocates as before (measured tracing malloc with `--stack`: 91,192 self-excluded hits
//! for 150,091 printed with `--consumers 2`, 27,955 for 146,491 with one). One pool for the
//! process was tried and measured no better (94,130–96,603): items travel in chunks of 256
//! and several chunks are in flight, more boxes than a pool should keep (stack copies are up
//! to 64 KiB each).

// The pools hold boxes, not values: a box is what an Event carries, and handing one out again
// is the point (a Vec<T> would copy the value into a new box).
#![allow(clippy::vec_box)]

use std::{cell::RefCell, fmt, ops::Deref, thread::LocalKey};

use probed_common::{CapturedStackEvent, StackHitEvent};

use crate::events::StackCopy;

/// Boxes kept per thread and type.
const KEEP: usize = 16;

/// A type whose boxes are pooled.
pub trait Poolable: Sized + 'static {
    /// This thread's pool of spare boxes.
    fn pool() -> &'static LocalKey<RefCell<Vec<Box<Self>>>>;
}

thread_local! {
    static STACK_HITS: RefCell<Vec<Box<StackHitEvent>>> = const { RefCell::new(Vec::new()) };
    static CAPTURED_STACKS: RefCell<Vec<Box<CapturedStackEvent>>> =
        const { RefCell::new(Vec::new()) };
    static STACK_COPIES: RefCell<Vec<Box<StackCopy>>> = const { RefCell::new(Vec::new()) };
}

impl Poolable for StackCopy {
    fn pool() -> &'static LocalKey<RefCell<Vec<Box<Self>>>> {
        &STACK_COPIES
    }
}

impl Poolable for StackHitEvent {
    fn pool() -> &'static LocalKey<RefCell<Vec<Box<Self>>>> {
        &STACK_HITS
    }
}

impl Poolable for CapturedStackEvent {
    fn pool() -> &'static LocalKey<RefCell<Vec<Box<Self>>>> {
        &CAPTURED_STACKS
    }
}

/// A box that goes back to its thread's pool when dropped.
pub struct Pooled<T: Poolable>(Option<Box<T>>);

impl<T: Poolable> Pooled<T> {
    /// `value` in a spare box of this thread, or a new one.
    pub fn new(value: T) -> Self {
        let boxed = match spare::<T>() {
            Some(mut b) => {
                *b = value;
                b
            }
            None => Box::new(value),
        };
        Self(Some(boxed))
    }

    /// A spare box of this thread refilled by `fill` (which can reuse what the box holds: a
    /// buffer's capacity), or a new box of `make()`, filled the same way.
    pub fn reuse(make: impl FnOnce() -> T, fill: impl FnOnce(&mut T)) -> Self {
        let mut boxed = spare::<T>().unwrap_or_else(|| Box::new(make()));
        fill(&mut boxed);
        Self(Some(boxed))
    }
}

/// A box from this thread's pool of `T`, if it has one.
fn spare<T: Poolable>() -> Option<Box<T>> {
    T::pool().try_with(|p| p.borrow_mut().pop()).ok().flatten()
}

impl<T: Poolable> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(boxed) = self.0.take() {
            // Past KEEP (or while the thread's locals are being torn down) the box is freed.
            let _ = T::pool().try_with(move |p| {
                let mut p = p.borrow_mut();
                if p.len() < KEEP {
                    p.push(boxed);
                }
            });
        }
    }
}

impl<T: Poolable> Deref for Pooled<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0
            .as_deref()
            .expect("a pooled box is only taken when dropped")
    }
}

impl<T: Poolable + Clone> Clone for Pooled<T> {
    fn clone(&self) -> Self {
        Self::new((**self).clone())
    }
}

impl<T: Poolable + fmt::Debug> fmt::Debug for Pooled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Poolable + PartialEq> PartialEq for Pooled<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Poolable + Eq> Eq for Pooled<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(nframes: u32) -> StackHitEvent {
        // SAFETY: StackHitEvent is plain #[repr(C)] integer data: all zeroes is a value.
        let mut e: StackHitEvent = unsafe { std::mem::zeroed() };
        e.nframes = nframes;
        e
    }

    /// A freed box is the next one handed out, with the new value in it.
    #[test]
    fn a_freed_box_is_reused() {
        let a = Pooled::new(stack(1));
        let at = std::ptr::from_ref::<StackHitEvent>(&a);
        drop(a);
        let b = Pooled::new(stack(2));
        assert_eq!(std::ptr::from_ref::<StackHitEvent>(&b), at);
        assert_eq!(b.nframes, 2);
    }

    /// A stack copy's box comes back with its buffer: the next copy is read into it.
    #[test]
    fn a_stack_copy_reuses_its_buffer() {
        let record = |fill: u8| {
            // SAFETY: StackCopyHitEvent is plain #[repr(C)] integer data: zeroes are a value.
            let mut head: probed_common::StackCopyHitEvent = unsafe { std::mem::zeroed() };
            head.hit.event = probed_common::EVENT_STACK_COPY_HIT;
            head.stack_len = 4096;
            let mut bytes = crate::events::test_records::bytes(&head);
            bytes.extend(std::iter::repeat_n(fill, 4096));
            bytes
        };
        let first = StackCopy::read(&record(1)).unwrap();
        let buffer = first.stack.as_ptr();
        drop(first);
        let second = StackCopy::read(&record(2)).unwrap();
        assert_eq!(second.stack.as_ptr(), buffer);
        assert!(second.stack.len() == 4096 && second.stack.iter().all(|&b| b == 2));
    }

    /// A box freed on another thread goes to that thread's pool, bounded.
    #[test]
    fn boxes_freed_elsewhere_stay_bounded() {
        let boxes: Vec<_> = (0..KEEP as u32 + 10)
            .map(|i| Pooled::new(stack(i)))
            .collect();
        let kept = std::thread::spawn(move || {
            drop(boxes);
            STACK_HITS.with(|p| p.borrow().len())
        })
        .join()
        .unwrap();
        assert_eq!(kept, KEEP);
    }
}
