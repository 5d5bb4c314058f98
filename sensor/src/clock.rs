//! The kernel's clocks: events are stamped on CLOCK_BOOTTIME, lines carry wall times.

/// Nanoseconds on `clock` now.
pub fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_REALTIME - CLOCK_BOOTTIME now: turns kernel event times into wall times.
pub fn boot_to_wall_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME)
}

/// CLOCK_BOOTTIME now, the clock of kernel event timestamps.
pub fn boot_time_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}
