//! A small disk that fills up on purpose: a tmpfs of a few MiB mounted for one test,
//! which the test fills with a filler file and frees again.
//!
//! Mounting needs root (CI runs as root on Linux). Where it cannot work,
//! [`SmallDisk::mount`] fails with the reason, and the test must fail with it rather
//! than pass without having filled a disk. Dropping it unmounts (lazily, so a
//! process still holding a file there cannot keep it mounted).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs and its filler file.
#[derive(Debug)]
pub struct SmallDisk {
    mount_point: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` at `mount_point` (created if missing).
    pub fn mount(mount_point: &Path, bytes: u64) -> Result<Self, String> {
        // SAFETY: geteuid(2) has no preconditions.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(format!(
                "the disk-full test mounts a small tmpfs, which needs root; running as uid {uid}"
            ));
        }
        std::fs::create_dir_all(mount_point)
            .map_err(|e| format!("cannot create {}: {e}", mount_point.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(mount_point)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs at {} failed ({}): {}",
                mount_point.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            mount_point: mount_point.to_path_buf(),
            filler: mount_point.join("filler"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Bytes still free for an unprivileged writer.
    pub fn free_bytes(&self) -> Result<u64, String> {
        let path = std::ffi::CString::new(self.mount_point.as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: statvfs(2) on a NUL-terminated path into a zeroed struct it fills.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Writes the filler until the disk refuses more (ENOSPC); returns its size.
    pub fn fill(&self) -> Result<u64, String> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .map_err(|e| format!("cannot create the filler: {e}"))?;
        let mut written = 0u64;
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0xa5u8; chunk];
            loop {
                match file.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => return Err(format!("filling the disk: {e}")),
                }
            }
        }
        Ok(written)
    }

    /// Deletes the filler: the space is back.
    pub fn free(&self) -> Result<(), String> {
        std::fs::remove_file(&self.filler).map_err(|e| format!("cannot delete the filler: {e}"))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}
