//! A global allocator for training processes that keeps freed large buffers for reuse.
//!
//! A training step on the CPU allocates thousands of short-lived activation and gradient
//! buffers of the same few sizes, step after step (burn's `flex` back-end gives every
//! operation a fresh output). glibc serves large requests with fresh `mmap`s (and returns
//! freed heap tops to the system), so each one is faulted in and zeroed by the kernel again:
//! `perf` put 27% of a 1,024-token LoRA step in the kernel, most of it in page zeroing.
//! [`BufferCache`] keeps freed blocks of at least [`CACHED_MIN_BYTES`] in size classes and
//! hands them out again, up to a limit on the bytes it holds idle; smaller requests, and
//! requests over-aligned beyond [`BLOCK_ALIGN`], go straight to the system allocator.
//!
//! Install it in a binary with `#[global_allocator]`:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: small_agent_student::buffers::BufferCache =
//!     small_agent_student::buffers::BufferCache::new(small_agent_student::buffers::DEFAULT_IDLE_LIMIT_BYTES);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Requests of at least this many bytes are cached (glibc's default threshold for serving a
/// request with its own `mmap` is 128 KiB; above it, fresh pages are the rule).
pub const CACHED_MIN_BYTES: usize = 256 << 10;

/// Alignment of every cached block (a cache line; enough for any SIMD load burn makes).
pub const BLOCK_ALIGN: usize = 64;

/// Default limit on the bytes held idle in the cache. A 1,024-token LoRA step of the 135M
/// student ran as fast with 1 GiB as with 4 GiB (117 and 119 tok/s; 103 with 512 MiB), and
/// its peak memory did not change with the limit (the peak comes at the end of the forward
/// pass, when few blocks are idle); a smaller limit bounds what idle blocks of lengths no
/// longer in use can hold.
pub const DEFAULT_IDLE_LIMIT_BYTES: usize = 1 << 30;

/// Size classes per doubling: a request is rounded up to the next of 8 steps between two
/// powers of two, so a block is at most 12.5% larger than the request it serves.
const CLASSES_PER_DOUBLING: usize = 8;

/// Doublings above [`CACHED_MIN_BYTES`] that have classes (up to 2^(18+30) bytes).
const DOUBLINGS: usize = 30;

const CLASS_COUNT: usize = DOUBLINGS * CLASSES_PER_DOUBLING;

/// Idle blocks of one class, as an intrusive singly linked list: each idle block's first
/// word holds the address of the next.
#[derive(Clone, Copy)]
struct FreeList {
    head: *mut u8,
}

/// The lists of every class. Raw pointers to idle blocks only this allocator owns.
struct Lists([FreeList; CLASS_COUNT]);

// SAFETY: the pointers are to blocks nobody else holds; access is serialised by the mutex.
unsafe impl Send for Lists {}

/// Counters of a [`BufferCache`] (for benchmarks and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct BufferCacheStats {
    /// Large requests served from an idle block.
    pub hits: u64,
    /// Large requests that went to the system allocator.
    pub misses: u64,
    /// Bytes held idle now.
    pub idle_bytes: usize,
    /// Freed blocks given back to the system because the idle limit was reached.
    pub released: u64,
}

/// A [`GlobalAlloc`] that keeps freed large blocks in size classes for reuse (see the module
/// documentation).
pub struct BufferCache {
    lists: Mutex<Lists>,
    idle_limit: AtomicUsize,
    idle_bytes: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    released: AtomicU64,
}

impl BufferCache {
    /// An empty cache that holds at most `idle_limit` bytes of idle blocks.
    pub const fn new(idle_limit: usize) -> Self {
        Self {
            lists: Mutex::new(Lists(
                [FreeList {
                    head: ptr::null_mut(),
                }; CLASS_COUNT],
            )),
            idle_limit: AtomicUsize::new(idle_limit),
            idle_bytes: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            released: AtomicU64::new(0),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> BufferCacheStats {
        BufferCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            idle_bytes: self.idle_bytes.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
        }
    }

    /// Changes the limit on idle bytes; `0` turns caching off (every freed large block goes
    /// back to the system, as without this allocator). Idle blocks over the new limit are
    /// given back now.
    pub fn set_idle_limit(&self, bytes: usize) {
        self.idle_limit.store(bytes, Ordering::Relaxed);
        if self.idle_bytes.load(Ordering::Relaxed) > bytes {
            self.release_idle();
        }
    }

    /// Gives every idle block back to the system.
    pub fn release_idle(&self) {
        let mut lists = self.lock();
        for (class, list) in lists.0.iter_mut().enumerate() {
            let size = class_size(class);
            while !list.head.is_null() {
                let block = list.head;
                // SAFETY: an idle block's first word is the next pointer (see `push`).
                list.head = unsafe { (block as *mut *mut u8).read() };
                // SAFETY: the block came from `System.alloc` with this class's layout.
                unsafe { System.dealloc(block, block_layout(size)) };
                self.idle_bytes.fetch_sub(size, Ordering::Relaxed);
                self.released.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lists> {
        // Nothing panics while the lock is held; recover the lists if something ever did.
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle block of `class`, if any.
    fn pop(&self, class: usize) -> *mut u8 {
        let mut lists = self.lock();
        let list = &mut lists.0[class];
        let block = list.head;
        if !block.is_null() {
            // SAFETY: an idle block's first word is the next pointer (see `push`).
            list.head = unsafe { (block as *mut *mut u8).read() };
            self.idle_bytes
                .fetch_sub(class_size(class), Ordering::Relaxed);
        }
        block
    }

    /// Keeps `block` of `class` idle, or gives it back when the limit would be passed.
    fn push(&self, class: usize, block: *mut u8) {
        let size = class_size(class);
        {
            let mut lists = self.lock();
            if self.idle_bytes.load(Ordering::Relaxed) + size
                <= self.idle_limit.load(Ordering::Relaxed)
            {
                let list = &mut lists.0[class];
                // SAFETY: the block is at least CACHED_MIN_BYTES long and BLOCK_ALIGN-aligned.
                unsafe { (block as *mut *mut u8).write(list.head) };
                list.head = block;
                self.idle_bytes.fetch_add(size, Ordering::Relaxed);
                return;
            }
        }
        self.released.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the block came from `System.alloc` with this class's layout.
        unsafe { System.dealloc(block, block_layout(size)) };
    }

    /// A block of `class`: an idle one, or a new one from the system.
    fn take(&self, class: usize) -> *mut u8 {
        let block = self.pop(class);
        if !block.is_null() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return block;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the layout has a non-zero size.
        unsafe { System.alloc(block_layout(class_size(class))) }
    }
}

/// The class of a request, when it is one this cache serves.
fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size();
    if size < CACHED_MIN_BYTES || layout.align() > BLOCK_ALIGN {
        return None;
    }
    // The doubling `size` falls in (above CACHED_MIN_BYTES), then the step within it.
    let doubling = (usize::BITS - 1 - size.leading_zeros()) as usize
        - CACHED_MIN_BYTES.trailing_zeros() as usize;
    let base = CACHED_MIN_BYTES << doubling;
    let step = base / CLASSES_PER_DOUBLING;
    let within = (size - base).div_ceil(step);
    let class = doubling * CLASSES_PER_DOUBLING + within;
    // `within` may be CLASSES_PER_DOUBLING: the next doubling's first class, which is right.
    (class < CLASS_COUNT).then_some(class)
}

/// Bytes of every block of `class`.
fn class_size(class: usize) -> usize {
    let doubling = class / CLASSES_PER_DOUBLING;
    let within = class % CLASSES_PER_DOUBLING;
    let base = CACHED_MIN_BYTES << doubling;
    base + within * (base / CLASSES_PER_DOUBLING)
}

fn block_layout(size: usize) -> Layout {
    // SAFETY: BLOCK_ALIGN is a power of two and class sizes are far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked(size, BLOCK_ALIGN) }
}

// SAFETY: every block handed out is at least `layout.size()` bytes long and aligned to
// `layout.align()`; a block is only ever returned to the allocator (system or cache) it came
// from, which `class_of` decides from the same layout at allocation and deallocation.
unsafe impl GlobalAlloc for BufferCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(&layout) {
            Some(class) => self.take(class),
            // SAFETY: forwarded unchanged.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(&layout) {
            Some(class) => {
                let block = self.pop(class);
                if block.is_null() {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    // Fresh pages from the system are zero already.
                    // SAFETY: the layout has a non-zero size.
                    return unsafe { System.alloc_zeroed(block_layout(class_size(class))) };
                }
                self.hits.fetch_add(1, Ordering::Relaxed);
                // SAFETY: the block is at least `layout.size()` bytes long.
                unsafe { ptr::write_bytes(block, 0, layout.size()) };
                block
            }
            // SAFETY: forwarded unchanged.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class_of(&layout) {
            Some(class) => self.push(class, block),
            // SAFETY: forwarded unchanged.
            None => unsafe { System.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with this alignment is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(&layout), class_of(&new_layout)) {
            // SAFETY: both sides are the system's; forwarded unchanged.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            // The block already has room.
            (Some(old), Some(new)) if old == new => block,
            _ => {
                // SAFETY: `new_layout` is valid (above); the old block is live and holds
                // `layout.size()` bytes.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn classes_cover_every_size_with_at_most_an_eighth_to_spare() {
        let mut previous = 0;
        for size in (CACHED_MIN_BYTES..CACHED_MIN_BYTES * 64).step_by(4093) {
            let class = class_of(&layout(size)).unwrap();
            let block = class_size(class);
            assert!(block >= size, "{size} B got a {block} B block");
            assert!(block - size <= size / 8, "{size} B got a {block} B block");
            assert!(class >= previous, "classes grow with sizes");
            previous = class;
        }
        assert_eq!(class_of(&layout(CACHED_MIN_BYTES - 1)), None);
        assert_eq!(class_of(&layout(CACHED_MIN_BYTES)), Some(0));
        assert_eq!(class_size(0), CACHED_MIN_BYTES);
        assert_eq!(class_of(&layout(2 * CACHED_MIN_BYTES)), Some(8));
        let over_aligned = Layout::from_size_align(CACHED_MIN_BYTES, 4096).unwrap();
        assert_eq!(class_of(&over_aligned), None);
    }

    #[test]
    fn a_freed_block_serves_the_next_request_of_its_class_zeroed_when_asked() {
        let cache = BufferCache::new(DEFAULT_IDLE_LIMIT_BYTES);
        let size = 3 * CACHED_MIN_BYTES + 1000;
        unsafe {
            let first = cache.alloc(layout(size));
            assert!(!first.is_null());
            assert_eq!(first as usize % BLOCK_ALIGN, 0);
            ptr::write_bytes(first, 0xab, size);
            cache.dealloc(first, layout(size));
            assert_eq!(
                cache.stats().idle_bytes,
                class_size(class_of(&layout(size)).unwrap())
            );

            // A slightly smaller request of the same class gets the same block, zeroed.
            let second = cache.alloc_zeroed(layout(size - 100));
            assert_eq!(second, first);
            let bytes = std::slice::from_raw_parts(second, size - 100);
            assert!(bytes.iter().all(|&b| b == 0));
            assert_eq!(cache.stats().hits, 1);
            assert_eq!(cache.stats().misses, 1);
            assert_eq!(cache.stats().idle_bytes, 0);
            cache.dealloc(second, layout(size - 100));
            cache.release_idle();
            assert_eq!(cache.stats().idle_bytes, 0);
        }
    }

    #[test]
    fn blocks_past_the_idle_limit_go_back_to_the_system() {
        let cache = BufferCache::new(CACHED_MIN_BYTES);
        unsafe {
            let a = cache.alloc(layout(CACHED_MIN_BYTES));
            let b = cache.alloc(layout(CACHED_MIN_BYTES));
            cache.dealloc(a, layout(CACHED_MIN_BYTES));
            cache.dealloc(b, layout(CACHED_MIN_BYTES));
            let stats = cache.stats();
            assert_eq!(stats.idle_bytes, CACHED_MIN_BYTES);
            assert_eq!(stats.released, 1);
            // Turned off: the idle block goes back, and so does the next freed one.
            cache.set_idle_limit(0);
            assert_eq!(cache.stats().idle_bytes, 0);
            let c = cache.alloc(layout(CACHED_MIN_BYTES));
            cache.dealloc(c, layout(CACHED_MIN_BYTES));
            assert_eq!(cache.stats().idle_bytes, 0);
            assert_eq!(cache.stats().released, 3);
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes_and_the_system_threshold() {
        let cache = BufferCache::new(DEFAULT_IDLE_LIMIT_BYTES);
        unsafe {
            // Small (system) → large (cache) → larger class → small again.
            let mut size = 1000;
            let mut block = cache.alloc(layout(size));
            for (i, byte) in std::slice::from_raw_parts_mut(block, size)
                .iter_mut()
                .enumerate()
            {
                *byte = i as u8;
            }
            for new_size in [
                CACHED_MIN_BYTES + 5,
                CACHED_MIN_BYTES + 6,
                5 * CACHED_MIN_BYTES,
                900,
            ] {
                block = cache.realloc(block, layout(size), new_size);
                assert!(!block.is_null());
                let kept = size.min(new_size).min(1000);
                let bytes = std::slice::from_raw_parts(block, kept);
                assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
                size = new_size;
            }
            cache.dealloc(block, layout(size));
            cache.release_idle();
        }
    }

    #[test]
    fn threads_share_the_cache_without_losing_blocks() {
        let cache = std::sync::Arc::new(BufferCache::new(DEFAULT_IDLE_LIMIT_BYTES));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || unsafe {
                    for i in 0..200 {
                        let size = CACHED_MIN_BYTES * (1 + (i + t) % 5);
                        let block = cache.alloc(layout(size));
                        ptr::write_bytes(block, t as u8, size);
                        let bytes = std::slice::from_raw_parts(block, size);
                        assert!(bytes.iter().all(|&b| b == t as u8));
                        cache.dealloc(block, layout(size));
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let stats = cache.stats();
        assert_eq!(stats.hits + stats.misses, 800);
        assert!(stats.hits > 0);
        cache.release_idle();
        assert_eq!(cache.stats().idle_bytes, 0);
    }
}
