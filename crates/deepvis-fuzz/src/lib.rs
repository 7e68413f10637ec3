//! Fuzzing of every reader of outside bytes, on stable Rust.
//!
//! `cargo fuzz` (libFuzzer) needs a nightly compiler, which this project does not use, so this
//! is a small harness of its own: each [`Target`] is a function from bytes to a result that
//! must never panic, abort or allocate without bound; [`fuzz`] feeds it mutations of committed
//! seed files (`corpus/<target>/`) for a bounded time or number of executions.
//!
//! Why our own mutator rather than `bolero`/`arbitrary`: without coverage instrumentation those
//! reduce to random bytes, while the damage worth trying here is specific to each format, and a
//! seeded generator makes every run reproducible from `(target, seed)`. The mutations:
//! bit flips and byte sets; truncation, deletion and duplication of chunks; integers set to
//! extremes (0, -1, 2^31, 10^12, 2^63, u64::MAX in 1/2/4/8-byte little-endian, varints, and
//! ASCII numbers in text); runs of a short chunk repeated thousands of times (deep nesting);
//! tokens of the format (pickle opcodes, ONNX op names, grammar words) inserted; splicing of
//! two seeds. Containers with checksums are mutated inside: a zip checkpoint's entries are
//! mutated and re-zipped with valid CRCs, a PNG's chunk CRCs are recomputed, a safetensors
//! header's length prefix is kept consistent, so the mutations reach the parsers behind them.
//! Instead of code coverage, an input joins the working corpus when it draws an error message
//! not seen before (digits stripped): a cheap signal of a new path through the reader.
//!
//! A global allocator that tracks the peak of live bytes ([`PeakAlloc`]) lets the runner
//! refuse an execution that allocated more than [`MAX_EXEC_BYTES`]: "no OOM" is checked, not
//! hoped for.

use std::collections::HashSet;
use std::io::{Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One execution may not allocate more than this beyond what was live before it. The image
/// decoder's own limit is 512 MiB per buffer; nothing else should come near.
pub const MAX_EXEC_BYTES: usize = 1 << 30;

/// Inputs are kept below this size; mutations that grow past it are cut back.
const MAX_INPUT: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Allocation tracking

/// The system allocator, counting live bytes and their peak. A binary that wants
/// [`fuzz`]'s allocation check declares `#[global_allocator] static A: PeakAlloc = PeakAlloc;`.
pub struct PeakAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TRACKING: AtomicUsize = AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new) };
        if !p.is_null() {
            if new >= layout.size() {
                let live =
                    LIVE.fetch_add(new - layout.size(), Ordering::Relaxed) + new - layout.size();
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Whether this process counts allocations (a [`PeakAlloc`] is installed and has seen one).
fn tracking() -> bool {
    if TRACKING.load(Ordering::Relaxed) == 0 {
        let probe = vec![0u8; 64];
        let seen = LIVE.load(Ordering::Relaxed) >= 64;
        drop(probe);
        TRACKING.store(if seen { 2 } else { 1 }, Ordering::Relaxed);
    }
    TRACKING.load(Ordering::Relaxed) == 2
}

// ---------------------------------------------------------------------------------------------
// Random numbers

/// splitmix64: tiny, fast, and the same sequence everywhere for a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Mutation

const INTERESTING: [u64; 16] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1_000_000_000_000,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 7,
];

const HUGE_TEXT: [&[u8]; 9] = [
    b"0",
    b"-1",
    b"1000000000000",
    b"99999999999999999999999",
    b"18446744073709551615",
    b"-9223372036854775808",
    b"1e308",
    b"nan",
    b"inf",
];

/// One mutation of `data`, of the generic kinds (see the crate docs).
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&[u8]], other: &[u8]) {
    let len = data.len();
    let at = |rng: &mut Rng| if len == 0 { 0 } else { rng.below(len) };
    match rng.below(13) {
        0 if len > 0 => {
            let i = at(rng);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = at(rng);
            data[i] = rng.next_u64() as u8;
        }
        2 if len > 0 => {
            // An integer field set to an extreme.
            let width = [1, 2, 4, 8][rng.below(4)];
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let bytes = v.to_le_bytes();
            let i = at(rng);
            let n = width.min(len - i);
            data[i..i + n].copy_from_slice(&bytes[..n]);
        }
        3 => {
            // A protobuf varint of 2^63-ish, or the longest legal one.
            let v: &[u8] = if rng.chance(2) {
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
            } else {
                &[0x80, 0x80, 0x80, 0x80, 0x10]
            };
            let i = at(rng);
            let end = (i + v.len()).min(len);
            data.splice(i..end, v.iter().copied());
        }
        4 if len > 0 => data.truncate(at(rng)),
        5 if len > 1 => {
            let i = at(rng);
            let n = 1 + rng.below((len - i).min(64));
            data.drain(i..i + n);
        }
        6 if len > 1 => {
            let i = at(rng);
            let n = 1 + rng.below((len - i).min(256));
            let chunk = data[i..i + n].to_vec();
            let j = rng.below(len + 1);
            data.splice(j..j, chunk);
        }
        7 => {
            // A short chunk repeated many times: deep nesting in any stack machine or grammar.
            let chunk: Vec<u8> = if !dict.is_empty() && rng.chance(2) {
                dict[rng.below(dict.len())].to_vec()
            } else if len > 0 {
                let i = at(rng);
                data[i..(i + 1 + rng.below(4)).min(len)].to_vec()
            } else {
                vec![b'(']
            };
            let times = [10, 100, 1000, 10_000, 100_000][rng.below(5)];
            let times = times.min(MAX_INPUT / chunk.len().max(1) / 2);
            let j = rng.below(len + 1);
            data.splice(j..j, chunk.repeat(times));
        }
        8 if !dict.is_empty() => {
            let tok = dict[rng.below(dict.len())];
            let j = rng.below(len + 1);
            if rng.chance(2) || len == 0 {
                data.splice(j..j, tok.iter().copied());
            } else {
                let end = (j + tok.len()).min(len);
                data.splice(j..end, tok.iter().copied());
            }
        }
        9 => {
            // An ASCII number (a JSON dim, an offset, a channel index) set to an extreme.
            let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
            if let Some(&start) = digits.get(rng.below(digits.len().max(1))) {
                let mut end = start;
                while end < len && data[end].is_ascii_digit() {
                    end += 1;
                }
                let mut s = start;
                while s > 0 && data[s - 1].is_ascii_digit() {
                    s -= 1;
                }
                let v = HUGE_TEXT[rng.below(HUGE_TEXT.len())];
                data.splice(s..end, v.iter().copied());
            }
        }
        10 if !other.is_empty() => {
            // Splice: our head, another seed's tail.
            let i = rng.below(len + 1);
            let j = rng.below(other.len());
            data.truncate(i);
            data.extend_from_slice(&other[j..]);
        }
        11 if len > 0 => {
            let i = at(rng);
            let n = 1 + rng.below((len - i).min(8));
            for b in &mut data[i..i + n] {
                *b = rng.next_u64() as u8;
            }
        }
        _ => {
            if len > 0 {
                let i = at(rng);
                data[i] = data[i].wrapping_add(if rng.chance(2) { 1 } else { 255 });
            }
        }
    }
    data.truncate(MAX_INPUT);
}

fn mutate_generic(rng: &mut Rng, input: &[u8], dict: &[&[u8]], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        mutate_bytes(rng, &mut out, dict, other);
    }
    out
}

/// Mutates the entries of a zip archive and writes them back as a valid archive (correct
/// CRCs), so that the pickle inside is reached; sometimes mutates the archive bytes instead.
fn mutate_zip(rng: &mut Rng, input: &[u8], dict: &[&[u8]], other: &[u8]) -> Vec<u8> {
    let entries = (|| {
        let mut a = zip::ZipArchive::new(Cursor::new(input)).ok()?;
        let mut out = Vec::new();
        for i in 0..a.len().min(64) {
            let mut f = a.by_index(i).ok()?;
            let mut data = Vec::new();
            (&mut f)
                .take(MAX_INPUT as u64)
                .read_to_end(&mut data)
                .ok()?;
            out.push((f.name().to_string(), data));
        }
        Some(out)
    })();
    let Some(mut entries) = entries.filter(|e| !e.is_empty() && !rng.chance(5)) else {
        return mutate_generic(rng, input, dict, other);
    };
    let n = entries.len();
    // Mostly the pickle, which is where the logic is.
    let pick = entries
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .filter(|_| rng.chance(2))
        .unwrap_or_else(|| rng.below(n));
    match rng.below(8) {
        0 => {
            entries.remove(pick);
        }
        1 => {
            let (name, data) = entries[pick].clone();
            entries.push((format!("{name}x"), data));
        }
        _ => {
            let data = &mut entries[pick].1;
            for _ in 0..1 + rng.below(3) {
                mutate_bytes(rng, data, dict, &[]);
            }
        }
    }
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let method = if rng.chance(4) {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in &entries {
        if w.start_file(name.as_str(), opts).is_err() || w.write_all(data).is_err() {
            return mutate_generic(rng, input, dict, other);
        }
    }
    match w.finish() {
        Ok(c) => c.into_inner(),
        Err(_) => mutate_generic(rng, input, dict, other),
    }
}

/// Mutates a safetensors file, mostly its JSON header, keeping the length prefix consistent.
fn mutate_safetensors(rng: &mut Rng, input: &[u8], dict: &[&[u8]], other: &[u8]) -> Vec<u8> {
    let header_len = input
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .filter(|&n| n <= input.len().saturating_sub(8));
    let Some(n) = header_len.filter(|_| !rng.chance(4)) else {
        return mutate_generic(rng, input, dict, other);
    };
    let mut header = input[8..8 + n].to_vec();
    for _ in 0..1 + rng.below(3) {
        mutate_bytes(rng, &mut header, dict, &[]);
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    let mut data = input[8 + n..].to_vec();
    if rng.chance(3) {
        mutate_bytes(rng, &mut data, &[], &[]);
    }
    out.extend_from_slice(&data);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Recomputes every chunk CRC of a PNG, so that mutated chunk contents reach the decoder.
fn fix_png_crcs(data: &mut [u8]) {
    let mut pos = 8;
    while pos + 12 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
        let Some(end) = (pos + 8).checked_add(len).filter(|&e| e + 4 <= data.len()) else {
            return;
        };
        let crc = crc32(&data[pos + 4..end]);
        data[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        pos = end + 4;
    }
}

/// Images: generic mutations, then for PNGs the CRCs made right again (most of the time) and
/// sometimes the declared width/height set to extremes.
fn mutate_image(rng: &mut Rng, input: &[u8], dict: &[&[u8]], other: &[u8]) -> Vec<u8> {
    let mut out = mutate_generic(rng, input, dict, other);
    if out.starts_with(b"\x89PNG") {
        if out.len() >= 24 && rng.chance(4) {
            let v = [1u32, 0, 0x7fff_ffff, 65535, 100_000, 1 << 20][rng.below(6)];
            let at = 16 + 4 * rng.below(2);
            out[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        if !rng.chance(8) {
            fix_png_crcs(&mut out);
        }
    } else if out.starts_with(b"\xff\xd8") && out.len() > 200 && rng.chance(4) {
        // A JPEG SOF's height/width: find the SOF0/SOF2 marker and set a dimension.
        if let Some(i) = out
            .windows(2)
            .position(|w| w == [0xff, 0xc0] || w == [0xff, 0xc2])
        {
            let v = [0u16, 1, 65535, 65500][rng.below(4)];
            let at = i + 5 + 2 * rng.below(2);
            if at + 2 <= out.len() {
                out[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Targets

/// What one execution gave: the reader accepted the input, or refused it with this message.
pub type Outcome = Result<(), String>;

type Mutator = fn(&mut Rng, &[u8], &[&[u8]], &[u8]) -> Vec<u8>;

/// A reader under test.
pub struct Target {
    pub name: &'static str,
    /// What it exercises, for the report.
    pub what: &'static str,
    pub run: fn(&[u8]) -> Outcome,
    /// Tokens of the format, for insertion and repetition.
    pub dict: &'static [&'static [u8]],
    mutate: Mutator,
    /// Extra seeds outside `corpus/<name>/` (paths relative to the workspace root).
    extra_seeds: &'static [&'static str],
}

const PICKLE_DICT: &[&[u8]] = &[
    b"(",
    b"]",
    b"}",
    b")",
    b"t",
    b"\x85",
    b"\x86",
    b"\x87",
    b"a",
    b"e",
    b"s",
    b"u",
    b"R",
    b"Q",
    b"q\x00",
    b"h\x00",
    b"r\xff\xff\xff\xff",
    b"j\xff\xff\xff\x7f",
    b"\x94",
    b"0",
    b"2",
    b"N",
    b"\x88",
    b"X\xff\xff\xff\x7f",
    b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00",
    b"\x8d\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ctorch\nFloatStorage\n",
    b"ccollections\nOrderedDict\n",
    b"cos\nsystem\n",
    b"X\x07\x00\x00\x00storage",
    b"J\xff\xff\xff\x7f",
    b"b",
    b"\x93",
    b".",
];

const SAFETENSORS_DICT: &[&[u8]] = &[
    b"\"shape\":[",
    b"\"data_offsets\":[",
    b"\"dtype\":\"F32\"",
    b"\"dtype\":\"BF16\"",
    b"\"dtype\":\"F64\"",
    b"\"dtype\":\"C64\"",
    b"1000000000000",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"\"__metadata__\":{",
    b"-1",
];

const ONNX_DICT: &[&[u8]] = &[
    b"Conv",
    b"Reshape",
    b"Shape",
    b"Gather",
    b"Concat",
    b"Range",
    b"ConstantOfShape",
    b"Constant",
    b"Slice",
    b"Resize",
    b"Expand",
    b"Tile",
    b"Loop",
    b"If",
    b"MatMul",
    b"Pad",
    b"Split",
    b"Transpose",
    b"\x0a\x06\x22\x04Relu",
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x3a\x00",
    b"external_data",
    b"location",
    b"../../etc/passwd",
    b"\x12\x00",
];

const IMAGE_DICT: &[&[u8]] = &[
    b"IHDR",
    b"IDAT",
    b"IEND",
    b"PLTE",
    b"tRNS",
    b"acTL",
    b"fcTL",
    b"\xff\xd8",
    b"\xff\xc0",
    b"\xff\xc2",
    b"\xff\xc4",
    b"\xff\xda",
    b"\xff\xdd",
    b"\xff\xd9",
    b"\x00\x00\x00\x00",
];

const OBJECTIVE_DICT: &[&[u8]] = &[
    b"(",
    b")",
    b":",
    b",",
    b"*",
    b"+",
    b"-",
    b"\"",
    b"neuron(",
    b"position(",
    b"layer(",
    b"dream(",
    b"class(",
    b"direction(",
    b"diversity(",
    b"_blocks.8",
    b"_conv_head",
    b"_blocks.15:319",
    b"99999999999999999999",
    b"1e39",
    b"-0",
    b"nan",
    b"\xc3\xa9",
    b"\\",
    b"#",
    b" ",
    b"_blocks.8:",
    b"class(\"",
    b"0.5 * ",
];

const DIRECTION_DICT: &[&[u8]] = &[
    b"[", b"]", b",", b" ", b"\n", b"1e39", b"-1e-45", b"nan", b"inf", b"-", b"+", b".", b"e",
    b"0x10", b"\xff",
];

fn weights(bytes: &[u8]) -> Outcome {
    deepvis_weights::load_bytes(bytes, Path::new("fuzz.pth"))
        .map(drop)
        .map_err(|e| e.to_string())
}

fn safetensors(bytes: &[u8]) -> Outcome {
    weights(bytes)
}

fn onnx(bytes: &[u8]) -> Outcome {
    deepvis_onnx::load_bytes(bytes, Path::new("fuzz.onnx"), None)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn onnx_lower(bytes: &[u8]) -> Outcome {
    let spec = deepvis_models::onnx::InputSpec {
        size: Some((32, 32)),
        normalization: None,
    };
    deepvis_models::onnx::load_bytes(bytes, Path::new("fuzz.onnx"), &spec)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn image(bytes: &[u8]) -> Outcome {
    deepvis_output::decode_rgb(bytes, Path::new("fuzz.png"))
        .map(drop)
        .map_err(|e| e.to_string())
}

fn bundled() -> &'static deepvis_models::Model {
    static M: OnceLock<deepvis_models::Model> = OnceLock::new();
    M.get_or_init(|| {
        deepvis_models::Model::bundled("efficientnet_lite0").expect("the bundled model loads")
    })
}

fn objective(bytes: &[u8]) -> Outcome {
    let src = String::from_utf8_lossy(bytes);
    // The grammar alone, then binding to the bundled model (layer, channel and position checks).
    // A SpecError shows the objective and a caret under the fault on lines of their own, by
    // design; the display is exercised (it slices the source at the span) and the message
    // itself must be one line.
    let shown = |e: deepvis_render::SpecError| {
        let _ = e.to_string();
        e.message
    };
    deepvis_render::objective::parse(&src).map_err(shown)?;
    deepvis_render::Objective::parse(&src, bundled())
        .map(drop)
        .map_err(shown)
}

fn direction(bytes: &[u8]) -> Outcome {
    deepvis_render::objective::parse_direction_text(bytes, "fuzz.txt").map(drop)
}

fn npy(bytes: &[u8]) -> Outcome {
    deepvis_output::parse_npy_f32(bytes).map(drop)
}

/// Every target, in report order.
pub fn targets() -> &'static [Target] {
    &[
        Target {
            name: "pth_zip",
            what: "torch.save zip checkpoints: zip container + data-only pickle machine + tensor views",
            run: weights,
            dict: PICKLE_DICT,
            mutate: mutate_zip,
            extra_seeds: &[],
        },
        Target {
            name: "pth_legacy",
            what: "legacy torch.save streams: five pickles + raw storages",
            run: weights,
            dict: PICKLE_DICT,
            mutate: mutate_generic,
            extra_seeds: &[],
        },
        Target {
            name: "safetensors",
            what: "safetensors: JSON header, dtypes, shapes and offsets",
            run: safetensors,
            dict: SAFETENSORS_DICT,
            mutate: mutate_safetensors,
            extra_seeds: &[],
        },
        Target {
            name: "onnx",
            what: "the ONNX reader: wire-format scan, protobuf decode, tensors, attributes",
            run: onnx,
            dict: ONNX_DICT,
            mutate: mutate_generic,
            extra_seeds: &[],
        },
        Target {
            name: "onnx_lower",
            what: "ONNX reader + lowering to an engine model (shape folding, op table)",
            run: onnx_lower,
            dict: ONNX_DICT,
            mutate: mutate_generic,
            extra_seeds: &["testdata/onnx/wide48x192.ts.onnx"],
        },
        Target {
            name: "image",
            what: "PNG/JPEG decoding as predict/dream/probe read their --image",
            run: image,
            dict: IMAGE_DICT,
            mutate: mutate_image,
            extra_seeds: &[],
        },
        Target {
            name: "objective",
            what: "the objective grammar, then binding to the bundled model",
            run: objective,
            dict: OBJECTIVE_DICT,
            mutate: mutate_generic,
            extra_seeds: &[],
        },
        Target {
            name: "direction",
            what: "the text direction-file reader of direction(LAYER, FILE)",
            run: direction,
            dict: DIRECTION_DICT,
            mutate: mutate_generic,
            extra_seeds: &[],
        },
        Target {
            name: "npy",
            what: "the .npy reader",
            run: npy,
            dict: &[b"{'descr': '<f4', 'fortran_order': False, 'shape': (", b"), }", b"<f8", b">f4"],
            mutate: mutate_generic,
            extra_seeds: &[],
        },
    ]
}

pub fn target(name: &str) -> Option<&'static Target> {
    targets().iter().find(|t| t.name == name)
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed seeds of a target, sorted by name.
pub fn seeds(t: &Target) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(t.name);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths.extend(t.extra_seeds.iter().map(|p| workspace_root().join(p)));
    let mut out: Vec<Vec<u8>> = paths.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    if t.name == "npy" {
        out.push(deepvis_output::encode_npy_f32(
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            &[2, 3],
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The runner

/// How long to fuzz a target: until either bound is reached.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub time: Duration,
    pub execs: u64,
}

impl Budget {
    /// From `DEEPVIS_FUZZ_SECS` / `DEEPVIS_FUZZ_ITERS`, else `default_secs` (and no limit on
    /// executions).
    pub fn from_env(default_secs: f64) -> Budget {
        let secs = std::env::var("DEEPVIS_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(default_secs);
        let execs = std::env::var("DEEPVIS_FUZZ_ITERS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        Budget {
            time: Duration::from_secs_f64(secs.max(0.0)),
            execs,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub execs: u64,
    pub accepted: u64,
    pub refused: u64,
    /// Distinct error messages (digits stripped) seen.
    pub messages: usize,
    pub corpus: usize,
    pub slowest: Duration,
    /// The most bytes one execution allocated beyond what was live before it (0 when the
    /// process does not install [`PeakAlloc`]).
    pub peak_bytes: usize,
    pub elapsed: Duration,
    /// Panics, oversized allocations and multi-line messages, each with the saved input.
    pub findings: Vec<String>,
}

fn message_class(msg: &str) -> String {
    msg.chars()
        .filter(|c| !c.is_ascii_digit())
        .take(120)
        .collect()
}

/// Where inputs that made a target misbehave are saved: `target/fuzz-findings/`.
pub fn findings_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("fuzz-findings")
}

fn save_finding(t: &Target, input: &[u8], what: &str) -> String {
    let dir = findings_dir();
    let _ = std::fs::create_dir_all(&dir);
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{}-{hash:016x}.bin", t.name));
    let _ = std::fs::write(&path, input);
    format!("{}: {what} (input saved as {})", t.name, path.display())
}

/// Runs one input through a target, checking that it neither panics nor over-allocates and
/// that a refusal is one line. `Err` describes what went wrong.
pub fn check_one(t: &Target, input: &[u8]) -> Result<Outcome, String> {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = catch_unwind(AssertUnwindSafe(|| (t.run)(input)));
    let extra = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let outcome = result.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("panicked: {msg}")
    })?;
    if tracking() && extra > MAX_EXEC_BYTES {
        return Err(format!("allocated {} MiB", extra >> 20));
    }
    if let Err(m) = &outcome {
        if m.contains('\n') || m.trim().is_empty() {
            return Err(format!(
                "refused with a message that is not one line: {m:?}"
            ));
        }
    }
    Ok(outcome)
}

/// Fuzzes `t` from its seeds with the mutations of this crate, deterministically for `seed`.
pub fn fuzz(t: &Target, budget: Budget, seed: u64) -> Report {
    let start = Instant::now();
    let mut rng = Rng::new(
        seed ^ t
            .name
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ b as u64),
    );
    let mut corpus = seeds(t);
    assert!(!corpus.is_empty(), "{}: no seeds", t.name);
    let mut report = Report::default();
    let mut seen: HashSet<String> = HashSet::new();
    // The seeds themselves first.
    let mut queue: Vec<Vec<u8>> = corpus.clone();
    while report.execs < budget.execs && start.elapsed() < budget.time {
        let input = match queue.pop() {
            Some(i) => i,
            None => {
                let base = &corpus[rng.below(corpus.len())];
                let other = corpus[rng.below(corpus.len())].clone();
                (t.mutate)(&mut rng, base, t.dict, &other)
            }
        };
        let t0 = Instant::now();
        let result = check_one(t, &input);
        report.slowest = report.slowest.max(t0.elapsed());
        report.peak_bytes = report.peak_bytes.max(
            PEAK.load(Ordering::Relaxed)
                .saturating_sub(LIVE.load(Ordering::Relaxed)),
        );
        report.execs += 1;
        match result {
            Ok(Ok(())) => report.accepted += 1,
            Ok(Err(msg)) => {
                report.refused += 1;
                if seen.insert(message_class(&msg)) && corpus.len() < 512 {
                    corpus.push(input);
                }
            }
            Err(what) => {
                if report.findings.len() < 20 {
                    report.findings.push(save_finding(t, &input, &what));
                }
            }
        }
    }
    report.messages = seen.len();
    report.corpus = corpus.len();
    report.elapsed = start.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_png_reference() {
        // The CRC of an IEND chunk (type only, no data) as every PNG ends with it.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn the_same_seed_gives_the_same_mutations() {
        let seed = b"_blocks.8:33 - 0.5 * _blocks.8:34".to_vec();
        let run = |s| {
            let mut rng = Rng::new(s);
            (0..50)
                .map(|_| mutate_generic(&mut rng, &seed, OBJECTIVE_DICT, b"class(3)"))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
