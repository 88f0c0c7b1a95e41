//! Compression of a batch's records section: the codec choice stored in the attributes
//! bits 0-2, and the lz4 / zstd codecs themselves.
//!
//! This module owns codec names and codes, and turning a records section into
//! compressed bytes and back. It never looks inside records and never trusts a size
//! that compressed data declares about itself: decompression reads through a bounded
//! buffer that grows only as real output appears and stops one byte past the caller's
//! limit. gzip (1) and snappy (2) are recognised only to be refused by name.
//!
//! Formats, chosen for Kafka compatibility:
//! - lz4 is the LZ4 *frame* format (not the raw block format), one frame, independent
//!   64 KiB blocks, no block or content checksum (the batch CRC covers the bytes), as
//!   Kafka's `Lz4BlockOutputStream` writes it.
//! - zstd is a standard zstd frame at level 3 (Kafka's default), with the content size
//!   recorded in the frame header.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use super::error::BatchError;
use super::header::COMPRESSION_MASK;

/// Default upper bound on the decompressed size of one records section: 64 MiB.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;

/// zstd level used by the builder (Kafka's default level).
pub const ZSTD_LEVEL: i32 = 3;

/// Compression codec of a batch's records section (attributes bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Records are stored as they are (code 0).
    #[default]
    None,
    /// LZ4 frame format (code 3).
    Lz4,
    /// Zstandard (code 4).
    Zstd,
}

impl Compression {
    /// Every codec Sluice can write and read.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Lz4, Compression::Zstd];

    /// The attributes code of this codec.
    pub const fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec's name as used in configuration and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// The codec for an attributes code (0-7); gzip, snappy and unassigned codes are
    /// [`BatchError::UnsupportedCompression`].
    pub fn from_code(code: u8) -> Result<Self, BatchError> {
        match code {
            0 => Ok(Compression::None),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            1 => Err(BatchError::UnsupportedCompression { code, name: "gzip" }),
            2 => Err(BatchError::UnsupportedCompression {
                code,
                name: "snappy",
            }),
            _ => Err(BatchError::UnsupportedCompression {
                code,
                name: "unknown",
            }),
        }
    }

    /// The codec named by a batch's `attributes` field (bits 0-2).
    pub fn from_attributes(attributes: i16) -> Result<Self, BatchError> {
        Self::from_code((attributes & COMPRESSION_MASK) as u8)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A codec name that is not one of `none`, `lz4`, `zstd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {input:?}: choose one of none, lz4, zstd{hint}")]
pub struct ParseCompressionError {
    input: String,
    hint: &'static str,
}

impl FromStr for Compression {
    type Err = ParseCompressionError;

    /// Parses `none`, `lz4` or `zstd`, ignoring ASCII case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        Compression::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| ParseCompressionError {
                input: s.to_owned(),
                hint: if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("snappy") {
                    " (gzip and snappy are not supported by Sluice)"
                } else {
                    ""
                },
            })
    }
}

thread_local! {
    /// One zstd compression context per thread: creating one per batch costs more
    /// than compressing a small batch.
    static ZSTD_CCTX: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    /// One zstd decompression context per thread, for the same reason.
    static ZSTD_DCTX: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// Appends `src` compressed with `codec` to `out`. Fails only if the codec's library
/// does (allocation failure); callers may then fall back to storing uncompressed.
pub(crate) fn compress_into(codec: Compression, src: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    match codec {
        Compression::None => {
            out.extend_from_slice(src);
            Ok(())
        }
        Compression::Lz4 => {
            use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
            let info = FrameInfo::new()
                .block_size(BlockSize::Max64KB)
                .block_mode(BlockMode::Independent)
                .block_checksums(false)
                .content_checksum(false);
            let mut encoder = FrameEncoder::with_frame_info(info, out);
            encoder.write_all(src)?;
            encoder.finish().map_err(io::Error::other)?;
            Ok(())
        }
        Compression::Zstd => ZSTD_CCTX.with(|cell| {
            let mut slot = cell.try_borrow_mut().map_err(io::Error::other)?;
            if slot.is_none() {
                *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
            }
            let Some(compressor) = slot.as_mut() else {
                return Err(io::Error::other("zstd compressor unavailable"));
            };
            let start = out.len();
            out.reserve(zstd::zstd_safe::compress_bound(src.len()));
            let mut cursor = io::Cursor::new(&mut *out);
            cursor.set_position(start as u64);
            compressor.compress_to_buffer(src, &mut cursor)?;
            Ok(())
        }),
    }
}

/// Decompresses a records section, refusing to produce more than `limit` bytes.
pub(crate) fn decompress(
    codec: Compression,
    src: &[u8],
    limit: usize,
) -> Result<Vec<u8>, BatchError> {
    // Start from a guess the input justifies; grow only as output really appears.
    let hint = src.len().saturating_mul(4).max(4096);
    let result = match codec {
        Compression::None => {
            if src.len() > limit {
                return Err(BatchError::DecompressedTooLarge { codec, limit });
            }
            return Ok(src.to_vec());
        }
        Compression::Lz4 => match check_lz4_frame(src) {
            Ok(()) => read_bounded(lz4_flex::frame::FrameDecoder::new(src), limit, hint),
            Err(reason) => Err(Bounded::Io(io::Error::other(reason))),
        },
        Compression::Zstd => ZSTD_DCTX.with(|cell| match cell.try_borrow_mut() {
            Ok(mut slot) => {
                let dctx = slot.get_or_insert_with(zstd::zstd_safe::DCtx::create);
                zstd_decompress(dctx, src, limit, hint)
            }
            // Re-entered on this thread (cannot happen today): use a private context.
            Err(_) => zstd_decompress(&mut zstd::zstd_safe::DCtx::create(), src, limit, hint),
        }),
    };
    result.map_err(|err| match err {
        Bounded::TooLarge => BatchError::DecompressedTooLarge { codec, limit },
        Bounded::Io(err) => BatchError::DecompressionFailed {
            codec,
            reason: err.to_string(),
        },
    })
}

/// Walks the structure of an LZ4 frame without decompressing it: standard magic, a
/// complete descriptor, blocks that fit, the end mark, and nothing after it.
///
/// `lz4_flex`'s streaming decoder treats input that stops at a block boundary as a
/// clean end, so a frame cut short would decode "successfully"; Kafka's reader calls
/// that a premature end of stream, and so does this check. Checksums (descriptor,
/// block, content) are left to the decoder, which verifies them.
fn check_lz4_frame(src: &[u8]) -> Result<(), String> {
    const MAGIC: u32 = 0x184D_2204;
    let u32_at = |pos: usize| -> Option<u32> {
        let bytes = src.get(pos..pos.checked_add(4)?)?;
        let mut le = [0u8; 4];
        le.copy_from_slice(bytes);
        Some(u32::from_le_bytes(le))
    };
    match u32_at(0) {
        None => return Err("stream ended inside the LZ4 frame magic".into()),
        Some(MAGIC) => {}
        Some(other) => {
            return Err(format!(
                "not an LZ4 frame: magic {other:#010x}, expected {MAGIC:#010x} (only the \
                 standard LZ4 frame format is accepted)"
            ));
        }
    }
    let Some(&flg) = src.get(4) else {
        return Err("stream ended inside the LZ4 frame descriptor".into());
    };
    let block_checksums = flg & 0x10 != 0;
    let content_size = flg & 0x08 != 0;
    let content_checksum = flg & 0x04 != 0;
    let dict_id = flg & 0x01 != 0;
    // magic, FLG, BD, optional content size and dictionary id, header checksum
    let mut pos = 4 + 2 + if content_size { 8 } else { 0 } + if dict_id { 4 } else { 0 } + 1;
    if pos > src.len() {
        return Err("stream ended inside the LZ4 frame descriptor".into());
    }
    loop {
        let Some(word) = u32_at(pos) else {
            return Err("LZ4 frame ends without its end mark (stream ended prematurely)".into());
        };
        pos += 4;
        if word == 0 {
            if content_checksum {
                pos += 4;
            }
            return match pos.cmp(&src.len()) {
                std::cmp::Ordering::Greater => {
                    Err("stream ended inside the LZ4 content checksum".into())
                }
                std::cmp::Ordering::Less => Err(format!(
                    "{} byte(s) after the end of the LZ4 frame",
                    src.len() - pos
                )),
                std::cmp::Ordering::Equal => Ok(()),
            };
        }
        let len = (word & 0x7fff_ffff) as usize + if block_checksums { 4 } else { 0 };
        if len > src.len() - pos {
            return Err(format!(
                "LZ4 block of {len} bytes runs past the end of the stream ({} left)",
                src.len() - pos
            ));
        }
        pos += len;
    }
}

fn zstd_decompress(
    dctx: &mut zstd::zstd_safe::DCtx<'static>,
    src: &[u8],
    limit: usize,
    hint: usize,
) -> Result<Vec<u8>, Bounded> {
    // Bound the window zstd may allocate: enough for any frame a common producer
    // writes (levels up to 19 use at most 2^23), never more than zstd's own default
    // cap (2^27), and otherwise no more than the output we would accept anyway.
    let window_log = ceil_log2(limit).clamp(23, 27);
    // A previous use may have stopped mid-frame (an error, or the limit); parameters
    // can only be set between frames.
    let _ = dctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
    dctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(window_log))
        .map_err(|code| Bounded::Io(io::Error::other(zstd::zstd_safe::get_error_name(code))))?;
    let decoder = zstd::stream::read::Decoder::with_context(src, dctx);
    read_bounded(decoder, limit, hint)
}

fn ceil_log2(n: usize) -> u32 {
    usize::BITS - n.saturating_sub(1).leading_zeros()
}

enum Bounded {
    TooLarge,
    Io(io::Error),
}

/// Reads `reader` to its end into a buffer that never exceeds `limit + 1` bytes; more
/// output than `limit` is [`Bounded::TooLarge`].
fn read_bounded<R: Read>(mut reader: R, limit: usize, hint: usize) -> Result<Vec<u8>, Bounded> {
    let cap = limit.saturating_add(1);
    let mut out = vec![0u8; hint.clamp(1, cap)];
    let mut filled = 0;
    loop {
        if filled == out.len() {
            if out.len() >= cap {
                return Err(Bounded::TooLarge);
            }
            let grow = out.len().max(8192).min(cap - out.len());
            out.resize(out.len() + grow, 0);
        }
        match reader.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Bounded::Io(err)),
        }
    }
    out.truncate(filled);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text-like data: repetitive enough for both codecs to halve it.
    fn sample(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("record {i} of topic orders, status=ok; ").as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn codes_and_names_match_kafka() {
        assert_eq!(Compression::None.code(), 0);
        assert_eq!(Compression::Lz4.code(), 3);
        assert_eq!(Compression::Zstd.code(), 4);
        for c in Compression::ALL {
            assert_eq!(Compression::from_code(c.code()), Ok(c));
            assert_eq!(c.name().parse::<Compression>(), Ok(c));
            assert_eq!(c.to_string(), c.name());
        }
    }

    #[test]
    fn from_attributes_reads_only_the_low_three_bits() {
        // Timestamp type, transactional and control bits do not change the codec.
        assert_eq!(
            Compression::from_attributes(0x0038 | 3),
            Ok(Compression::Lz4)
        );
        assert_eq!(
            Compression::from_attributes(0x0100 | 4),
            Ok(Compression::Zstd)
        );
        assert_eq!(Compression::from_attributes(0x0040), Ok(Compression::None));
    }

    #[test]
    fn gzip_snappy_and_unassigned_codes_are_unsupported_by_name() {
        assert_eq!(
            Compression::from_attributes(1),
            Err(BatchError::UnsupportedCompression {
                code: 1,
                name: "gzip"
            })
        );
        assert_eq!(
            Compression::from_attributes(2),
            Err(BatchError::UnsupportedCompression {
                code: 2,
                name: "snappy"
            })
        );
        for code in 5..=7u8 {
            assert_eq!(
                Compression::from_code(code),
                Err(BatchError::UnsupportedCompression {
                    code,
                    name: "unknown"
                })
            );
        }
    }

    #[test]
    fn parsing_names_ignores_case_and_rejects_others_helpfully() {
        assert_eq!(" LZ4 ".parse::<Compression>(), Ok(Compression::Lz4));
        assert_eq!("Zstd".parse::<Compression>(), Ok(Compression::Zstd));
        let err = "gzip".parse::<Compression>().unwrap_err().to_string();
        assert!(err.contains("not supported by Sluice"), "{err}");
        let err = "brotli".parse::<Compression>().unwrap_err().to_string();
        assert!(err.contains("none, lz4, zstd"), "{err}");
    }

    #[test]
    fn each_codec_round_trips_and_compresses_repetitive_data() {
        let data = sample(200_000);
        for codec in Compression::ALL {
            let mut out = vec![0xAA; 7]; // compress_into appends after existing bytes
            compress_into(codec, &data, &mut out).unwrap();
            assert_eq!(&out[..7], &[0xAA; 7]);
            if codec != Compression::None {
                assert!(out.len() < data.len() / 2, "{codec}: {} bytes", out.len());
            }
            let back = decompress(codec, &out[7..], DEFAULT_MAX_DECOMPRESSED).unwrap();
            assert_eq!(back, data, "{codec}");
        }
    }

    #[test]
    fn lz4_output_is_a_kafka_compatible_frame() {
        let mut out = Vec::new();
        compress_into(Compression::Lz4, &sample(1000), &mut out).unwrap();
        // Magic 0x184D2204 little-endian, FLG version 01 + independent blocks, no
        // checksums, no content size; BD = 64 KiB blocks.
        assert_eq!(&out[..4], &[0x04, 0x22, 0x4d, 0x18]);
        assert_eq!(out[4], 0b0110_0000);
        assert_eq!(out[5], 0b0100_0000);
    }

    #[test]
    fn decompression_beyond_the_limit_is_refused() {
        let data = vec![0u8; 1 << 20];
        for codec in [Compression::Lz4, Compression::Zstd, Compression::None] {
            let mut out = Vec::new();
            compress_into(codec, &data, &mut out).unwrap();
            assert_eq!(
                decompress(codec, &out, (1 << 20) - 1),
                Err(BatchError::DecompressedTooLarge {
                    codec,
                    limit: (1 << 20) - 1
                })
            );
            // Exactly at the limit is fine.
            assert_eq!(decompress(codec, &out, 1 << 20).unwrap().len(), 1 << 20);
        }
    }

    #[test]
    fn corrupt_and_truncated_compressed_data_is_a_decompression_error() {
        let data = sample(50_000);
        for codec in [Compression::Lz4, Compression::Zstd] {
            let mut out = Vec::new();
            compress_into(codec, &data, &mut out).unwrap();
            for cut in [1, 4, 10, out.len() / 2, out.len() - 1] {
                let got = decompress(codec, &out[..cut], DEFAULT_MAX_DECOMPRESSED);
                assert!(
                    matches!(got, Err(BatchError::DecompressionFailed { .. })),
                    "{codec} cut at {cut}: {got:?}"
                );
            }
            let garbage = vec![0x5a; 100];
            assert!(matches!(
                decompress(codec, &garbage, DEFAULT_MAX_DECOMPRESSED),
                Err(BatchError::DecompressionFailed { .. })
            ));
        }
    }

    #[test]
    fn lz4_frame_cut_at_a_block_boundary_is_rejected() {
        // lz4_flex alone would take a frame without its end mark for a complete one.
        let mut out = Vec::new();
        compress_into(Compression::Lz4, &sample(1000), &mut out).unwrap();
        assert_eq!(&out[out.len() - 4..], &[0, 0, 0, 0]);
        let err = decompress(
            Compression::Lz4,
            &out[..out.len() - 4],
            DEFAULT_MAX_DECOMPRESSED,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("end mark"), "{err}");
    }

    #[test]
    fn bytes_after_the_lz4_frame_are_rejected() {
        let mut out = Vec::new();
        compress_into(Compression::Lz4, &sample(1000), &mut out).unwrap();
        out.push(0);
        let err = decompress(Compression::Lz4, &out, DEFAULT_MAX_DECOMPRESSED)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 byte(s) after the end of the LZ4 frame"),
            "{err}"
        );
    }

    #[test]
    fn legacy_and_skippable_lz4_frames_are_rejected() {
        for magic in [0x184C_2102u32, 0x184D_2A50] {
            let mut buf = magic.to_le_bytes().to_vec();
            buf.extend_from_slice(&[0; 16]);
            let err = decompress(Compression::Lz4, &buf, DEFAULT_MAX_DECOMPRESSED)
                .unwrap_err()
                .to_string();
            assert!(err.contains("not an LZ4 frame"), "{err}");
        }
    }

    #[test]
    fn lz4_frames_with_checksums_and_content_size_decode() {
        use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
        let data = sample(300_000);
        for info in [
            FrameInfo::new()
                .block_checksums(true)
                .content_checksum(true),
            FrameInfo::new()
                .content_size(Some(data.len() as u64))
                .block_size(BlockSize::Max256KB),
            FrameInfo::new().block_mode(BlockMode::Linked),
        ] {
            let mut enc = FrameEncoder::with_frame_info(info.clone(), Vec::new());
            enc.write_all(&data).unwrap();
            let out = enc.finish().unwrap();
            assert_eq!(
                decompress(Compression::Lz4, &out, DEFAULT_MAX_DECOMPRESSED).unwrap(),
                data,
                "{info:?}"
            );
        }
    }

    #[test]
    fn zstd_context_is_reusable_after_an_aborted_frame() {
        let data = sample(1 << 20);
        let mut out = Vec::new();
        compress_into(Compression::Zstd, &data, &mut out).unwrap();
        // Stop mid-frame (limit), then mid-frame (truncation), then decode normally.
        assert!(decompress(Compression::Zstd, &out, 1000).is_err());
        assert!(
            decompress(
                Compression::Zstd,
                &out[..out.len() / 2],
                DEFAULT_MAX_DECOMPRESSED
            )
            .is_err()
        );
        assert_eq!(
            decompress(Compression::Zstd, &out, DEFAULT_MAX_DECOMPRESSED).unwrap(),
            data
        );
    }

    #[test]
    fn ceil_log2_is_exact_at_powers_of_two() {
        assert_eq!(ceil_log2(0), 0);
        assert_eq!(ceil_log2(1), 0);
        assert_eq!(ceil_log2(2), 1);
        assert_eq!(ceil_log2(3), 2);
        assert_eq!(ceil_log2(DEFAULT_MAX_DECOMPRESSED), 26);
        assert_eq!(ceil_log2(DEFAULT_MAX_DECOMPRESSED + 1), 27);
    }
}
