//! The chunked decoder (`h1::chunked`), fed the same body at once and in pieces.
//!
//! Input: one byte `n`, then `n % 16` two-byte split points, then the body. The pieces are fed
//! the way the worker feeds reads: each piece as its own buffer, the cursor starting at 0.
//!
//! Checks: the cursor never passes the end of what was given and never goes back; data ranges
//! are non-empty and inside the unread input; decoding in pieces gives the same bytes, the same
//! end (at the same offset) and the same error as decoding at once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_proxy::h1::chunked::{Chunk, ChunkError, ChunkedDecoder};

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The body ended this many bytes into the input.
    Done(usize),
    NeedMore,
    Error(ChunkError),
}

/// Feeds `piece` to `d`, appending data to `out`; `Some` once the body ended or failed.
fn feed(d: &mut ChunkedDecoder, piece: &[u8], out: &mut Vec<u8>) -> Option<Result<usize, ChunkError>> {
    let mut pos = 0;
    loop {
        let before = pos;
        let r = d.decode(piece, &mut pos);
        assert!(pos <= piece.len(), "cursor {pos} past the end of {} bytes", piece.len());
        assert!(pos >= before, "cursor went back from {before} to {pos}");
        match r {
            Ok(Chunk::Data(range)) => {
                assert!(!range.is_empty(), "empty data range");
                assert!(range.start >= before && range.end == pos, "data {range:?} read from {before} to {pos}");
                out.extend_from_slice(&piece[range]);
            }
            Ok(Chunk::NeedMore) => {
                assert_eq!(pos, piece.len(), "asked for more with input left");
                assert!(!d.is_done());
                return None;
            }
            Ok(Chunk::Done) => {
                assert!(d.is_done());
                return Some(Ok(pos));
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

fn decode(input: &[u8], cuts: &[usize]) -> (Vec<u8>, End) {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        match feed(&mut d, &input[start..end], &mut out) {
            None => start = end,
            Some(Ok(pos)) => return (out, End::Done(start + pos)),
            Some(Err(e)) => return (out, End::Error(e)),
        }
    }
    (out, End::NeedMore)
}

fuzz_target!(|data: &[u8]| {
    let [n, rest @ ..] = data else { return };
    let n = usize::from(n % 16);
    if rest.len() < 2 * n {
        return;
    }
    let (points, body) = rest.split_at(2 * n);
    let mut cuts: Vec<usize> =
        points.chunks_exact(2).map(|p| usize::from(u16::from_le_bytes([p[0], p[1]])) % (body.len() + 1)).collect();
    cuts.sort_unstable();

    let whole = decode(body, &[]);
    let pieces = decode(body, &cuts);
    assert_eq!(whole.1, pieces.1, "at once and in pieces {cuts:?} end differently");
    assert_eq!(whole.0, pieces.0, "at once and in pieces {cuts:?} give different data");
    // One byte at a time, as the unit tests do.
    let bytes: Vec<usize> = (1..body.len()).collect();
    if body.len() <= 4096 {
        let single = decode(body, &bytes);
        assert_eq!(whole.1, single.1, "at once and byte by byte end differently");
        assert_eq!(whole.0, single.0, "at once and byte by byte give different data");
    }
    if let End::Done(end) = whole.1 {
        assert!(end <= body.len());
        // What follows the body is left alone: the same body followed by anything ends at the
        // same place.
        let mut longer = body[..end].to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(decode(&longer, &[]).1, End::Done(end));
    }
});
