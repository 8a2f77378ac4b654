//! Reads the frame headers of a client's HTTP/2 byte stream as it arrives and counts the frames
//! floods are made of, per second: PING and SETTINGS (each makes the server answer), RST_STREAM,
//! PRIORITY, WINDOW_UPDATE and empty DATA frames (each costs work and carries nothing). h2
//! bounds what these cost in memory, but answers them for ever; past a limit the connection is
//! closed with GOAWAY `ENHANCE_YOUR_CALM`. Sans I/O: nine bytes of state per frame header.

use std::time::{Duration, Instant};

/// The client connection preface, which precedes the first frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frames of one kind a client may send in one second.
const PER_SECOND: [(u8, u32, &str); 6] = [
    (0x6, 100, "ping_flood"),
    (0x4, 100, "settings_flood"),
    (0x3, 1000, "reset_flood"),
    (0x2, 1000, "priority_flood"),
    (0x8, 10_000, "window_update_flood"),
    (0x0, 1000, "empty_data_flood"),
];

#[derive(Debug)]
pub struct Guard {
    preface_left: usize,
    header: [u8; 9],
    have: usize,
    payload_left: usize,
    window_start: Instant,
    counts: [u32; 6],
}

impl Guard {
    pub fn new(now: Instant) -> Guard {
        Guard {
            preface_left: PREFACE.len(),
            header: [0; 9],
            have: 0,
            payload_left: 0,
            window_start: now,
            counts: [0; 6],
        }
    }

    /// Reads `data`, the next bytes from the client; `Some(reason)` once a flood is seen.
    pub fn scan(&mut self, mut data: &[u8], now: Instant) -> Option<&'static str> {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.counts = [0; 6];
        }
        let skip = self.preface_left.min(data.len());
        self.preface_left -= skip;
        data = &data[skip..];
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (9 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let h = self.header;
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            self.payload_left = len;
            let (kind, flags) = (h[3], h[4]);
            let counted = match kind {
                // Acknowledgements answer the server's own frames.
                0x6 | 0x4 => flags & 0x1 == 0,
                // DATA counts when it is empty and does not end its stream.
                0x0 => len == 0 && flags & 0x1 == 0,
                0x3 | 0x2 | 0x8 => true,
                _ => false,
            };
            if !counted {
                continue;
            }
            if let Some(i) = PER_SECOND.iter().position(|(k, _, _)| *k == kind) {
                self.counts[i] += 1;
                if self.counts[i] > PER_SECOND[i].1 {
                    return Some(PER_SECOND[i].2);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn pings_are_counted_across_reads_and_acks_are_not() {
        let t = Instant::now();
        let mut g = Guard::new(t);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[0; 6]));
        for _ in 0..100 {
            bytes.extend(frame(0x6, 0, &[1; 8]));
            bytes.extend(frame(0x6, 1, &[1; 8]));
        }
        // Fed a few bytes at a time: headers split across reads are read whole.
        for chunk in bytes.chunks(7) {
            assert_eq!(g.scan(chunk, t), None);
        }
        assert_eq!(g.scan(&frame(0x6, 0, &[1; 8]), t), Some("ping_flood"));
        // A new second: counted afresh.
        let mut g2 = Guard::new(t);
        assert_eq!(g2.scan(PREFACE, t), None);
        for i in 0..300 {
            let later = t + Duration::from_millis(i * 10);
            assert_eq!(g2.scan(&frame(0x6, 0, &[1; 8]), later), None, "{i}");
        }
    }

    #[test]
    fn data_counts_only_when_empty_and_not_ending() {
        let t = Instant::now();
        let mut g = Guard::new(t);
        g.scan(PREFACE, t);
        for _ in 0..2000 {
            assert_eq!(g.scan(&frame(0x0, 0, b"x"), t), None);
            assert_eq!(g.scan(&frame(0x0, 1, b""), t), None);
        }
        let mut hit = None;
        for _ in 0..1001 {
            hit = hit.or(g.scan(&frame(0x0, 0, b""), t));
        }
        assert_eq!(hit, Some("empty_data_flood"));
    }
}
