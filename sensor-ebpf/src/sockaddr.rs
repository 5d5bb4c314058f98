//! Copying a `struct sockaddr` from user memory into a [`SockAddr`].
use aya_ebpf::helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes};
use sensor_common::{SockAddr, AF_INET, AF_INET6, AF_UNIX};

/// Reads the address at `src` into `dst`, which is fully rewritten (unused bytes zeroed, so the
/// unix path can serve as a map key).
#[inline(always)]
pub fn read_user_sockaddr(src: *const u8, dst: &mut SockAddr) -> Result<(), i64> {
    *dst = SockAddr::EMPTY;
    // SAFETY (all reads below): user memory read through the probe helpers, which fault safely.
    let family: u16 = unsafe { bpf_probe_read_user(src.cast::<u16>()) }.map_err(i64::from)?;
    dst.family = family;
    match family {
        AF_INET => {
            // sockaddr_in: family, port (big endian), 4-byte address.
            let port: u16 = unsafe { bpf_probe_read_user(src.add(2).cast()) }.map_err(i64::from)?;
            let addr: [u8; 4] = unsafe { bpf_probe_read_user(src.add(4).cast()) }.map_err(i64::from)?;
            dst.port = u16::from_be(port);
            dst.addr[..4].copy_from_slice(&addr);
        }
        AF_INET6 => {
            // sockaddr_in6: family, port (big endian), flowinfo, 16-byte address.
            let port: u16 = unsafe { bpf_probe_read_user(src.add(2).cast()) }.map_err(i64::from)?;
            dst.addr = unsafe { bpf_probe_read_user(src.add(8).cast()) }.map_err(i64::from)?;
            dst.port = u16::from_be(port);
        }
        AF_UNIX => {
            // An abstract or unnamed socket reads as an empty path.
            let _ = unsafe { bpf_probe_read_user_str_bytes(src.add(2), &mut dst.path) };
        }
        _ => {}
    }
    Ok(())
}
