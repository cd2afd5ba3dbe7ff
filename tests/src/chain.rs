//! A second XDP program for the `--chain` tests: it counts every packet it
//! gets in an array and passes it. It is loaded as libbpf loads a
//! `SEC("xdp")` program (type XDP, expected attach type `BPF_XDP`), or with
//! multi-buffer support as `SEC("xdp.frags")` does, from eleven instructions
//! written here, so that what follows throttle's program is not throttle's
//! own build; and pinned on bpffs, where the daemon finds it.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;

/// How the counting program is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// As `SEC("xdp")`: what throttle can chain.
    Plain,
    /// As `SEC("xdp.frags")`: multi-buffer, which a program without it
    /// cannot tail-call.
    Frags,
}

/// The counting program, pinned; the pin is removed on drop.
pub struct CountingProgram {
    map: OwnedFd,
    prog: OwnedFd,
    pin: PathBuf,
}

/// `union bpf_attr` of the commands used here, as a zeroed byte block with
/// the fields written at their offsets (linux/bpf.h).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn u32(mut self, offset: usize, value: u32) -> Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64(mut self, offset: usize, value: u64) -> Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn bytes(mut self, offset: usize, value: &[u8]) -> Self {
        self.0[offset..offset + value.len()].copy_from_slice(value);
        self
    }

    /// `bpf(cmd, self)`: the descriptor or value it returns.
    fn call(&mut self, cmd: libc::c_long) -> io::Result<i64> {
        // SAFETY: every pointer the attribute holds points at memory that
        // the caller keeps alive for the call; the kernel reads (and for a
        // lookup writes) no more than the sizes given beside them.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), self.0.len()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn fd(&mut self, cmd: libc::c_long) -> io::Result<OwnedFd> {
        let fd = i32::try_from(self.call(cmd)?).expect("a descriptor");
        // SAFETY: the kernel just returned this descriptor to us alone.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// One BPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[0] = code;
    out[1] = (src << 4) | dst;
    out[2..4].copy_from_slice(&off.to_ne_bytes());
    out[4..8].copy_from_slice(&imm.to_ne_bytes());
    out
}

impl CountingProgram {
    /// Loads the program and pins it at `pin` (on bpffs).
    pub fn load(pin: &Path, flavour: Flavour) -> io::Result<Self> {
        let map = Attr::new().u32(0, BPF_MAP_TYPE_ARRAY).u32(4, 4).u32(8, 8).u32(12, 1).fd(BPF_MAP_CREATE)?;
        let map_fd = map.as_raw_fd();
        let program: Vec<[u8; 8]> = vec![
            // *(u32 *)(r10 - 4) = 0: the key.
            insn(0x62, 10, 0, -4, 0),
            // r2 = r10; r2 += -4
            insn(0xbf, 2, 10, 0, 0),
            insn(0x07, 2, 0, 0, -4),
            // r1 = the map (ld_imm64, BPF_PSEUDO_MAP_FD)
            insn(0x18, 1, 1, 0, map_fd),
            insn(0, 0, 0, 0, 0),
            // r0 = bpf_map_lookup_elem(r1, r2)
            insn(0x85, 0, 0, 0, 1),
            // if r0 == 0 goto pass
            insn(0x15, 0, 0, 2, 0),
            // lock *(u64 *)(r0 + 0) += 1
            insn(0xb7, 1, 0, 0, 1),
            insn(0xdb, 0, 1, 0, 0),
            // pass: return XDP_PASS
            insn(0xb7, 0, 0, 0, 2),
            insn(0x95, 0, 0, 0, 0),
        ];
        let code: Vec<u8> = program.concat();
        let license = CString::new("GPL").expect("no NUL");
        let mut log = vec![0u8; 4096];
        let flags = match flavour {
            Flavour::Plain => 0,
            Flavour::Frags => BPF_F_XDP_HAS_FRAGS,
        };
        let mut attr = Attr::new()
            .u32(0, BPF_PROG_TYPE_XDP)
            .u32(4, u32::try_from(program.len()).expect("eleven"))
            .u64(8, code.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, u32::try_from(log.len()).expect("a page"))
            .u64(32, log.as_mut_ptr() as u64)
            .u32(44, flags)
            .bytes(48, b"chain_count")
            .u32(68, BPF_XDP);
        let prog = attr.fd(BPF_PROG_LOAD).map_err(|e| {
            let text = String::from_utf8_lossy(&log);
            io::Error::new(e.kind(), format!("BPF_PROG_LOAD: {e}: {}", text.trim_end_matches('\0')))
        })?;
        let path = CString::new(pin.as_os_str().as_encoded_bytes()).expect("no NUL in the pin path");
        Attr::new()
            .u64(0, path.as_ptr() as u64)
            .u32(8, u32::try_from(prog.as_raw_fd()).expect("a descriptor"))
            .call(BPF_OBJ_PIN)?;
        Ok(Self { map, prog, pin: pin.to_path_buf() })
    }

    /// Packets the program has seen.
    pub fn count(&self) -> u64 {
        let key = 0u32;
        let mut value = 0u64;
        Attr::new()
            .u32(0, u32::try_from(self.map.as_raw_fd()).expect("a descriptor"))
            .u64(8, (&raw const key) as u64)
            .u64(16, (&raw mut value) as u64)
            .call(BPF_MAP_LOOKUP_ELEM)
            .unwrap_or_else(|e| panic!("reading the chained program's count: {e}"));
        value
    }

    /// Where it is pinned.
    pub fn pin(&self) -> &Path {
        &self.pin
    }

    /// The program's descriptor (for `BPF_PROG_TEST_RUN`).
    pub fn fd(&self) -> &OwnedFd {
        &self.prog
    }
}

impl Drop for CountingProgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pin);
    }
}
