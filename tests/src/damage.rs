//! Damaging a stopped broker's log files the way a power loss or a bad disk does: a
//! torn last write and a garbled sector near the end of the active segment.
//!
//! Knows only the documented frame layout of a `.log` file (a little-endian `u32`
//! payload length first, then 21 more header bytes, then the payload; see
//! `sluice_broker::log::frame`) and the data directory layout
//! (`partitions/<topic>-<partition>.g<group>/log/<base offset>.log`). It must only
//! ever be used on a broker that is not running.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Header bytes of a frame before its payload.
const FRAME_HEADER_LEN: u64 = 25;

/// What was done to one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    /// Length before and after the torn write.
    pub len_before: u64,
    pub len_after: u64,
    /// The byte flipped (all bits), inside the frame before the torn one.
    pub flipped_at: u64,
}

/// The active (last) segment of every partition of `topic` under `data_dir`.
pub fn active_segments(data_dir: &Path, topic: &str) -> Result<Vec<PathBuf>, String> {
    let partitions = data_dir.join("partitions");
    let entries = std::fs::read_dir(&partitions)
        .map_err(|e| format!("cannot list {}: {e}", partitions.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let dir = entry.map_err(|e| e.to_string())?.path();
        let is_topic = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit_once('-'))
            .is_some_and(|(t, _)| t == topic);
        if !is_topic {
            continue;
        }
        let logs = std::fs::read_dir(dir.join("log"))
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let last = logs
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max();
        if let Some(last) = last {
            out.push(last);
        }
    }
    out.sort();
    Ok(out)
}

/// Tears the last frame of `segment` (cuts the file in its middle) and flips one byte
/// in the middle of the frame before it. `None` when the segment has fewer than two
/// frames.
pub fn tear_and_garble(segment: &Path) -> Result<Option<Damage>, String> {
    let io = |e: std::io::Error| format!("{}: {e}", segment.display());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)
        .map_err(io)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    let frames = frames(&bytes);
    let [.., before_last, last] = &frames[..] else {
        return Ok(None);
    };
    let len_before = bytes.len() as u64;
    let len_after = last.start + (last.end - last.start) / 2;
    let flipped_at = before_last.start + (before_last.end - before_last.start) / 2;
    file.set_len(len_after).map_err(io)?;
    file.seek(SeekFrom::Start(flipped_at)).map_err(io)?;
    file.write_all(&[!bytes[flipped_at as usize]]).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(Some(Damage {
        segment: segment.to_path_buf(),
        len_before,
        len_after,
        flipped_at,
    }))
}

/// Where each whole frame of a segment lies, walking the length fields from the
/// start; stops at zeros (a punched tail) or a frame that overruns the file.
fn frames(bytes: &[u8]) -> Vec<std::ops::Range<u64>> {
    let mut starts = Vec::new();
    let mut pos = 0u64;
    while let Some(len) = bytes
        .get(pos as usize..pos as usize + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    {
        let end = pos + FRAME_HEADER_LEN + u64::from(len);
        if end > bytes.len() as u64 || bytes[pos as usize..end as usize].iter().all(|&b| b == 0) {
            break;
        }
        starts.push(pos..end);
        pos = end;
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&[7u8; (FRAME_HEADER_LEN - 4) as usize]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_last_frame_is_torn_and_the_one_before_garbled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("00000000000000000000.log");
        let mut bytes = frame(&[1; 100]);
        bytes.extend(frame(&[2; 40]));
        bytes.extend(frame(&[3; 60]));
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(frames(&bytes), vec![0..125, 125..190, 190..275]);

        let d = tear_and_garble(&path).expect("damage").expect("frames");
        let after = std::fs::read(&path).expect("read");
        assert_eq!((d.len_before, d.len_after), (275, 190 + 85 / 2));
        assert_eq!(after.len() as u64, d.len_after);
        assert!((125..190).contains(&d.flipped_at));
        assert_eq!(after[d.flipped_at as usize], !bytes[d.flipped_at as usize]);
        let changed = after.iter().zip(&bytes).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 1);
    }

    #[test]
    fn a_segment_with_one_frame_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("00000000000000000000.log");
        std::fs::write(&path, frame(&[1; 10])).expect("write");
        assert_eq!(tear_and_garble(&path).expect("damage"), None);
    }
}
