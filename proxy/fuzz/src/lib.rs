//! What the fuzz targets share, and the admin crate's document parsing compiled in from its
//! source files: depending on `ringway-admin` would build RocksDB (through `ringway-store`),
//! which the parsing does not use.

use ringway_policy::{DotSegments, EscapedSlashes, PathNormalization, Semicolons, TrailingSlash};

/// `admin/src/parse.rs`: the guarded JSON and YAML parsing of the admin API and `--config`.
#[path = "../../../admin/src/parse.rs"]
pub mod parse;

/// `admin/src/bootstrap.rs`: `parse_document_as`, what `--config` (and its tests) use.
#[path = "../../../admin/src/bootstrap.rs"]
pub mod bootstrap;

/// One of the 72 path normalisations, chosen by a byte (0 is the default one).
pub fn normalization(b: u8) -> PathNormalization {
    let mut x = usize::from(b);
    let mut pick = |n: usize| {
        let v = x % n;
        x /= n;
        v
    };
    PathNormalization {
        merge_slashes: pick(2) == 0,
        dot_segments: [DotSegments::Resolve, DotSegments::Reject][pick(2)],
        escaped_slashes: [EscapedSlashes::Keep, EscapedSlashes::Reject, EscapedSlashes::Decode][pick(3)],
        trailing_slash: [TrailingSlash::Ignore, TrailingSlash::Strict][pick(2)],
        semicolons: [Semicolons::Ignore, Semicolons::Reject, Semicolons::Literal][pick(3)],
    }
}
