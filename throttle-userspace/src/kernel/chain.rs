//! The program that follows throttle's (`--chain`): what throttle passes
//! continues into an XDP program pinned on bpffs, by a tail call into slot 0
//! of the `CHAIN` program array, instead of going to the stack.
//!
//! The array is pinned with the other maps, and adopted with them: the
//! kernel empties a program array once no descriptor or pin refers to it,
//! so its pin keeps the chain in force while no daemon runs (killed, or
//! between an upgrade's two daemons), and the next daemon's program tail
//! calls through the same array. The array holds a reference to the program
//! that follows, which thus runs as long as throttle's does, whatever
//! becomes of its own pin.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::MapError,
    programs::{ProgramError, ProgramInfo, ProgramType},
    sys::SyscallError,
};
use throttle_common::map_name;

use super::{error::map_err, Dataplane, KernelError};

/// The program throttle's continues into.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Chained {
    /// Where it is pinned.
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Its id and name, as `bpftool prog` shows them.
    pub id: u32,
    pub name: String,
}

/// Why a pinned program cannot follow throttle's.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("--chain {}: cannot open it as a pinned program: {source}", path.display())]
    Open { path: PathBuf, source: ProgramError },
    #[error("--chain {}: it is a {found} program; only an XDP program can follow throttle's", path.display())]
    NotXdp { path: PathBuf, found: String },
    #[error(
        "--chain {}: the kernel refuses to chain it ({errno}). A program that follows throttle's must be \
         loaded as throttle's is: an XDP program for an interface (libbpf `SEC(\"xdp\")`, expected attach type \
         BPF_XDP), without multi-buffer support (not `SEC(\"xdp.frags\")`), JIT-compiled, and not bound to \
         a device",
        path.display()
    )]
    Refused { path: PathBuf, errno: io::Error },
}

impl Dataplane {
    /// Makes what the program passes continue into the XDP program pinned
    /// at `path`, or (`None`) go to the stack again. It takes effect at once
    /// on the interfaces attached; before any, it is in force from the first
    /// attachment on. A program that cannot follow is refused, naming why,
    /// and the chain is left as it was.
    pub fn set_chain(&mut self, path: Option<&Path>) -> Result<Option<&Chained>, KernelError> {
        let Some(path) = path else {
            if self.chained.take().is_some() {
                self.rewrite_config(false)?;
            }
            // Adopted, the slot may hold an earlier daemon's chain; the
            // flag off, nothing calls it, and emptied it lets it go.
            match self.chain.clear_index(&0) {
                Ok(()) => {}
                Err(MapError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(other) => return Err(map_err(map_name::CHAIN)(other)),
            }
            return Ok(None);
        };
        let open = |source| ChainError::Open { path: path.to_path_buf(), source };
        let info = ProgramInfo::from_pin(path).map_err(open)?;
        let found = info.program_type();
        if found != ProgramType::Xdp.into() {
            // `BPF_PROG_TYPE_SOCKET_FILTER` as `socket_filter`.
            let name = format!("{found:?}");
            let found = name.strip_prefix("BPF_PROG_TYPE_").unwrap_or(&name).to_lowercase();
            return Err(ChainError::NotXdp { path: path.to_path_buf(), found }.into());
        }
        let fd = info.fd().map_err(open)?;
        match self.chain.set(0, &fd, 0) {
            Ok(()) => {}
            Err(MapError::SyscallError(SyscallError { io_error, .. })) => {
                return Err(ChainError::Refused { path: path.to_path_buf(), errno: io_error }.into());
            }
            Err(other) => return Err(map_err(map_name::CHAIN)(other)),
        }
        let name = info.name_as_str().unwrap_or_default().to_owned();
        self.chained = Some(Chained { path: path.to_path_buf(), id: info.id(), name });
        self.rewrite_config(false)?;
        Ok(self.chained.as_ref())
    }

    /// The program that follows throttle's, if one does.
    #[must_use]
    pub fn chained(&self) -> Option<&Chained> {
        self.chained.as_ref()
    }
}
