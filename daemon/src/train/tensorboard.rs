//! TensorBoard event files without TensorFlow (training spec §8.2): TFRecord framing (length,
//! masked CRC-32C of the length, payload, masked CRC-32C of the payload) around hand-encoded
//! `Event` protobufs holding scalar summaries (`simple_value`). None of the Rust crates fits (§8.3),
//! and the few fields needed take less code than a protobuf dependency.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// TFRecord's masked CRC: rotate right by 15, add 0xA282EAD8.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn length_delimited(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `Event{wall_time, step, file_version}` or `Event{wall_time, step, summary{value{tag,
/// simple_value}}}`.
fn event(wall_time: f64, step: i64, body: EventBody) -> Vec<u8> {
    let mut out = vec![0x09];
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(0x10);
    varint(&mut out, step as u64);
    match body {
        EventBody::FileVersion(v) => length_delimited(&mut out, 0x1A, v.as_bytes()),
        EventBody::Scalar(tag, value) => {
            let mut v = Vec::new();
            length_delimited(&mut v, 0x0A, tag.as_bytes());
            v.push(0x15);
            v.extend_from_slice(&value.to_le_bytes());
            let mut summary = Vec::new();
            length_delimited(&mut summary, 0x0A, &v);
            length_delimited(&mut out, 0x2A, &summary);
        }
    }
    out
}

enum EventBody<'a> {
    FileVersion(&'a str),
    Scalar(&'a str, f32),
}

/// One TFRecord frame around `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// An open event file; every write is flushed (as accelerate does), so a crash loses nothing.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `events.out.tfevents.<secs>.<host>.<pid>.<n>` in `dir` and writes the
    /// file-version record. A resumed run opens a new file; TensorBoard reads them all.
    pub fn create(dir: &Path) -> std::io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let host = if host.is_empty() { "localhost".to_string() } else { host };
        let secs = now() as u64;
        let mut n = 0;
        let path = loop {
            let p = dir.join(format!("events.out.tfevents.{secs:010}.{host}.{}.{n}", std::process::id()));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let mut w = EventWriter { file: BufWriter::new(File::create(&path)?), path };
        w.write(&event(now(), 0, EventBody::FileVersion("brain.Event:2")))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.file.write_all(&frame(payload))?;
        self.file.flush()
    }

    /// `add_scalar(tag, value, step)`.
    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) -> std::io::Result<()> {
        self.write(&event(now(), step as i64, EventBody::Scalar(tag, value as f32)))
    }
}

/// A scalar read back from an event file: (tag, step, value).
pub type ScalarRecord = (String, i64, f32);

/// Reads every scalar of an event file, checking both CRCs of every record (for tests and tools).
pub fn read_scalars(path: &Path) -> std::io::Result<Vec<ScalarRecord>> {
    let bytes = std::fs::read(path)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len_bytes = bytes.get(at..at + 8).ok_or_else(|| bad("truncated length"))?;
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let crc = u32::from_le_bytes(
            bytes.get(at + 8..at + 12).ok_or_else(|| bad("truncated"))?.try_into().expect("4"),
        );
        if crc != masked_crc(len_bytes) {
            return Err(bad("length crc mismatch"));
        }
        let payload = bytes.get(at + 12..at + 12 + len).ok_or_else(|| bad("truncated payload"))?;
        let crc = u32::from_le_bytes(
            bytes.get(at + 12 + len..at + 16 + len).ok_or_else(|| bad("truncated"))?.try_into().expect("4"),
        );
        if crc != masked_crc(payload) {
            return Err(bad("payload crc mismatch"));
        }
        at += 16 + len;
        let mut p = Parser { b: payload, at: 0 };
        let mut step = 0i64;
        let mut scalars = Vec::new();
        while let Some((field, wire)) = p.key() {
            match (field, wire) {
                (2, 0) => step = p.varint() as i64,
                (5, 2) => {
                    let summary = p.bytes();
                    let mut s = Parser { b: summary, at: 0 };
                    while let Some((f, w)) = s.key() {
                        if (f, w) == (1, 2) {
                            let mut v = Parser { b: s.bytes(), at: 0 };
                            let (mut tag, mut value) = (String::new(), f32::NAN);
                            while let Some((vf, vw)) = v.key() {
                                match (vf, vw) {
                                    (1, 2) => tag = String::from_utf8_lossy(v.bytes()).into_owned(),
                                    (2, 5) => value = f32::from_le_bytes(v.fixed::<4>()),
                                    (_, vw) => v.skip(vw),
                                }
                            }
                            scalars.push((tag, value));
                        } else {
                            s.skip(w);
                        }
                    }
                }
                (_, w) => p.skip(w),
            }
        }
        out.extend(scalars.into_iter().map(|(t, v)| (t, step, v)));
    }
    Ok(out)
}

/// A minimal protobuf reader for the fields above; malformed input ends the message early.
struct Parser<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        while let Some(&byte) = self.b.get(self.at) {
            self.at += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        v
    }

    fn key(&mut self) -> Option<(u64, u8)> {
        (self.at < self.b.len()).then(|| {
            let k = self.varint();
            (k >> 3, (k & 7) as u8)
        })
    }

    fn bytes(&mut self) -> &'a [u8] {
        let len = self.varint() as usize;
        let end = (self.at + len).min(self.b.len());
        let out = &self.b[self.at..end];
        self.at = end;
        out
    }

    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(s) = self.b.get(self.at..self.at + N) {
            out.copy_from_slice(s);
        }
        self.at += N;
        out
    }

    fn skip(&mut self, wire: u8) {
        match wire {
            0 => {
                self.varint();
            }
            1 => self.at += 8,
            2 => {
                self.bytes();
            }
            5 => self.at += 4,
            _ => self.at = self.b.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" (RFC 3720 appendix).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // TFRecord's mask of an empty payload's CRC (0): rotate 0 → 0xA282EAD8.
        assert_eq!(masked_crc(b""), 0xA282_EAD8);
    }

    #[test]
    fn event_writer_scalars_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("loss/current", 0.25, 1).unwrap();
        w.scalar("lr/unet", 1e-4, 300).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let scalars = read_scalars(&path).unwrap();
        assert_eq!(
            scalars,
            vec![("loss/current".to_string(), 1, 0.25f32), ("lr/unet".to_string(), 300, 1e-4f32)]
        );
        // A flipped payload byte is caught by the CRC.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(read_scalars(&path).is_err());
    }
}
