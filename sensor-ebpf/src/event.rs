//! Filling event headers and reserving ring buffer records, with drops counted per kind.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
    maps::ring_buf::RingBufEntry,
};
use sensor_common::{EventHeader, EventKind, CLIENT_LOSS_OFFSET, SIDE_CLIENT};

use crate::maps::{self, CLIENT_EVENTS, EVENTS, LOSSES, SELF_TGID};

/// `bpf_ringbuf_query` flags.
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// Reserves a record of type `T` for `kind` on the daemon ring, counting the loss when it is
/// full.
#[inline(always)]
pub fn reserve<T: 'static>(kind: EventKind) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_loss(kind as u32);
    }
    entry
}

/// Reserves a record on the ring of `side`. Data records keep the last quarter of the daemon
/// ring free, so process and connection events still get through a flood of data.
#[inline(always)]
pub fn reserve_on<T: 'static>(side: u32, kind: EventKind, data: bool) -> Option<RingBufEntry<T>> {
    if side == SIDE_CLIENT {
        let entry = CLIENT_EVENTS.reserve::<T>(0);
        if entry.is_none() {
            count_loss(kind as u32 + CLIENT_LOSS_OFFSET);
        }
        return entry;
    }
    if data {
        let used = EVENTS.query(BPF_RB_AVAIL_DATA);
        let size = EVENTS.query(BPF_RB_RING_SIZE);
        if used > size / 4 * 3 {
            count_loss(kind as u32);
            return None;
        }
    }
    reserve::<T>(kind)
}

#[inline(always)]
fn count_loss(slot: u32) {
    if let Some(count) = LOSSES.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *count += 1 };
    }
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
