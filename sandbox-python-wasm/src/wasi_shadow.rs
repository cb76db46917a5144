//! A replacement for WASI's `poll_oneoff`.
//!
//! wasmtime's own implementation sleeps inside the host call, where the interrupt flag cannot
//! reach: `time.sleep(3600)` would hold the exec (and the host thread) for an hour whatever the
//! timeout. This one sleeps in short slices and stops the guest once its deadline has passed.
//! A sandboxed interpreter has no sockets or pipes worth waiting on, so file-descriptor
//! subscriptions are reported ready at once (the following read or write gives the real answer).

use crate::engine::{Deadline, Shared};
use std::time::{Duration, Instant, SystemTime};
use wasmtime::{Caller, Extern};

const SUB_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const TAG_CLOCK: u8 = 0;
const CLOCK_REALTIME: u32 = 0;
const ABSTIME: u16 = 1;
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const SLICE: Duration = Duration::from_millis(5);

/// Store data that carries an exec deadline.
pub(crate) trait HasDeadline {
    fn deadline(&self) -> &Deadline;
    fn shared(&self) -> &'static Shared;
    /// The origin of the guest's monotonic clock (see [`GuestClock`]).
    fn clock_origin(&self) -> Instant;
}

/// The guest's monotonic clock, installed so that its origin is known here: an absolute
/// monotonic wake-up time (what `time.sleep` uses) can then be turned into a duration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuestClock(pub Instant);

impl wasmtime_wasi::HostMonotonicClock for GuestClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

pub(crate) fn poll_oneoff<T: HasDeadline>(
    mut caller: Caller<'_, T>,
    in_ptr: i32,
    out_ptr: i32,
    nsubs: i32,
    nevents_ptr: i32,
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(mem)) = caller.get_export("memory") else {
        return Ok(ERRNO_FAULT);
    };
    let n = nsubs as u32 as usize;
    if n == 0 {
        return Ok(ERRNO_INVAL);
    }
    let (in_ptr, out_ptr, nev) = (
        in_ptr as u32 as usize,
        out_ptr as u32 as usize,
        nevents_ptr as u32 as usize,
    );
    let size = mem.data_size(&caller);
    let fits = |p: usize, len: usize| p.checked_add(len).is_some_and(|e| e <= size);
    if !fits(in_ptr, n * SUB_SIZE) || !fits(out_ptr, n * EVENT_SIZE) || !fits(nev, 4) {
        return Ok(ERRNO_FAULT);
    }
    let subs: Vec<u8> = mem.data(&caller)[in_ptr..in_ptr + n * SUB_SIZE].to_vec();
    let u64_at =
        |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let mut wait: Option<Duration> = None;
    let mut any_fd = false;
    for s in subs.chunks(SUB_SIZE) {
        if s[8] == TAG_CLOCK {
            let id = u32::from_le_bytes(s[16..20].try_into().unwrap_or_default());
            let timeout = u64_at(s, 24);
            let flags = u16::from_le_bytes(s[40..42].try_into().unwrap_or_default());
            let d = if flags & ABSTIME != 0 {
                if id == CLOCK_REALTIME {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    Duration::from_nanos(timeout).saturating_sub(now)
                } else {
                    let now = caller.data().clock_origin().elapsed();
                    Duration::from_nanos(timeout).saturating_sub(now)
                }
            } else {
                Duration::from_nanos(timeout)
            };
            wait = Some(wait.map_or(d, |w| w.min(d)));
        } else {
            any_fd = true;
        }
    }
    if !any_fd {
        if let Some(total) = wait {
            let until = Instant::now() + total;
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                if caller.data().deadline().passed(caller.data().shared()) {
                    return Err(wasmtime::Error::new(crate::full::TimedOut));
                }
                std::thread::sleep(SLICE.min(until - now));
            }
        }
    }
    // Which subscriptions fired: every fd one, or else the clocks that are due.
    let mut events = Vec::new();
    for s in subs.chunks(SUB_SIZE) {
        let fire = if s[8] == TAG_CLOCK { !any_fd } else { true };
        if fire {
            let mut e = [0u8; EVENT_SIZE];
            e[0..8].copy_from_slice(&s[0..8]);
            e[10] = s[8];
            events.extend_from_slice(&e);
        }
    }
    let count = (events.len() / EVENT_SIZE) as u32;
    let data = mem.data_mut(&mut caller);
    data[out_ptr..out_ptr + events.len()].copy_from_slice(&events);
    data[nev..nev + 4].copy_from_slice(&count.to_le_bytes());
    Ok(ERRNO_SUCCESS)
}
