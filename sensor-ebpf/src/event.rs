//! Filling event headers and reserving ring buffer records, with drops counted per kind.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
    maps::ring_buf::RingBufEntry,
};
use sensor_common::{EventHeader, EventKind};

use crate::maps::{self, EVENTS, LOSSES, SELF_TGID};

/// Reserves a record of type `T` for `kind`, counting the loss when the buffer is full.
#[inline(always)]
pub fn reserve<T: 'static>(kind: EventKind) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        if let Some(count) = LOSSES.get_ptr_mut(kind as u32) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *count += 1 };
        }
    }
    entry
}

#[inline(always)]
pub fn fill_header(header: &mut EventHeader, kind: EventKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    header.kind = kind as u32;
    header._reserved = 0;
    // SAFETY: helpers without arguments.
    header.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    header.pid = pid_tgid as u32;
    header.tgid = (pid_tgid >> 32) as u32;
    header.uid = uid_gid as u32;
    header.gid = (uid_gid >> 32) as u32;
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// True for the agent's own process, which is never traced.
#[inline(always)]
pub fn is_self(tgid: u32) -> bool {
    tgid == maps::load(&SELF_TGID)
}
