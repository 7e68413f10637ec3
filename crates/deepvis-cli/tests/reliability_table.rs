//! Keeps the table of bad inputs in `docs/reliability.md` true: every row's command is run and
//! its exit code and one-line message compared with the table's. `DEEPVIS_BLESS=1` rewrites the
//! table's exit and message columns from what the commands actually do (review the diff).
//!
//! In commands and messages, `$T` is a temporary folder holding the hostile files made below,
//! `$W` the committed weights fixtures and `$C` the (empty) download cache. A command may start with `NAME=VALUE` environment
//! settings.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const DOC: &str = "../../docs/reliability.md";
const START: &str = "<!-- table:start -->";
const END: &str = "<!-- table:end -->";

/// A protocol-2 pickle of `{}` nested in `depth` lists.
fn deep_pickle(depth: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x02];
    p.extend(std::iter::repeat_n(b']', depth));
    p.extend(std::iter::repeat_n(b'a', depth - 1));
    p.push(b'.');
    p
}

fn zip_with(entries: &[(&str, &[u8])], method: zip::CompressionMethod) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(true);
    for (name, data) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The hostile and damaged files the table's commands read.
fn make_files(t: &Path, w: &Path) {
    let write = |name: &str, bytes: &[u8]| std::fs::write(t.join(name), bytes).unwrap();
    let fixture = |name: &str| std::fs::read(w.join(name)).unwrap();
    let zip = fixture("small_zip.pth");
    write("truncated_zip.pth", &zip[..zip.len() / 2]);
    let legacy = fixture("small_legacy.pth");
    write("truncated_legacy.pth", &legacy[..legacy.len() / 2]);
    let st = fixture("small.safetensors");
    write("truncated.safetensors", &st[..st.len() - 10]);
    write(
        "tera.safetensors",
        &safetensors(
            r#"{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,16]}}"#,
            &[0; 16],
        ),
    );
    // os.system("echo pwned"), the classic malicious pickle.
    write(
        "evil.pth",
        b"\x80\x02cos\nsystem\nX\x0a\x00\x00\x00echo pwned\x85R.",
    );
    write("deep.pth", &deep_pickle(1_000_000));
    write(
        "deep_zip.pth",
        &zip_with(
            &[("archive/data.pkl", &deep_pickle(1_000_000))],
            zip::CompressionMethod::Deflated,
        ),
    );
    // 96 MiB of zeros deflate to about 100 KB: more than the archive could hold uncompressed.
    write(
        "bomb.pth",
        &zip_with(
            &[("archive/data.pkl", &vec![0u8; 96 << 20])],
            zip::CompressionMethod::Deflated,
        ),
    );
    write(
        "notes.pth",
        b"These are not the weights you are looking for.\n",
    );
    // ONNX: a million `Relu` nodes appended to an empty model as a second graph field.
    let mut onnx = vec![0x08, 0x08, 0x3a, 0x02, 0x0a, 0x00];
    let nodes: Vec<u8> = [0x0a, 0x06, 0x22, 0x04, b'R', b'e', b'l', b'u'].repeat(1_000_000);
    onnx.push(0x3a);
    let mut len = nodes.len() as u64;
    while len >= 0x80 {
        onnx.push((len as u8) | 0x80);
        len >>= 7;
    }
    onnx.push(len as u8);
    onnx.extend_from_slice(&nodes);
    write("million.onnx", &onnx);
    write("garbage.onnx", b"\xff\xff\xff\xff definitely not protobuf");
    std::fs::create_dir_all(t.join("folder.onnx")).unwrap();
    write(
        "garbage.png",
        b"\x89PNG\r\n\x1a\n but then nothing of a PNG",
    );
    let jpeg = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deepvis-fuzz/corpus/image/baseline.jpg"),
    )
    .unwrap();
    write("truncated.jpg", &jpeg[..jpeg.len() / 2]);
    std::fs::create_dir_all(t.join("damaged")).unwrap();
    write(
        "damaged/manifest.json",
        b"{\"tool\": \"deepvis 0.1.0\", \"runs\": [",
    );
    write("words.txt", b"0.5 1.5 two");
    write("short.txt", b"[0.5, 1.5, 2.5]");
}

/// Splits a command line like a shell would for these simple cases: spaces, '…' and "…".
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, ' ') => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Cells of a markdown table row, `\|` unescaped.
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

fn unquote_code(cell: &str) -> &str {
    cell.trim().trim_start_matches('`').trim_end_matches('`')
}

/// Runs a row's command; returns (exit code, the one line it printed besides notes).
fn run_row(command: &str, t: &Path, w: &Path, cache: &Path) -> (i32, String) {
    let expanded = command
        .replace("$T", &t.to_string_lossy())
        .replace("$W", &w.to_string_lossy());
    let mut words = split_words(&expanded).into_iter().peekable();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deepvis"));
    cmd.env("DEEPVIS_CACHE", cache)
        .env_remove("DEEPVIS_OFFLINE")
        .env_remove("DEEPVIS_FAULT_WRITE")
        .env_remove("DEEPVIS_FAULT_NAN")
        .current_dir(t);
    while let Some(word) = words.next_if(|w| w.contains('=') && !w.starts_with('-')) {
        let (k, v) = word.split_once('=').unwrap();
        cmd.env(k, v);
    }
    assert_eq!(words.next().as_deref(), Some("deepvis"), "{command}");
    let o = cmd.args(words).output().expect("the binary runs");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{command}: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("note: "))
        .collect();
    assert_eq!(lines.len(), 1, "{command}: not one line: {stderr}");
    let line = lines[0]
        .replace(&*t.to_string_lossy(), "$T")
        .replace(&*w.to_string_lossy(), "$W")
        .replace(&*cache.to_string_lossy(), "$C");
    (o.status.code().unwrap_or(-1), line)
}

#[test]
fn the_bad_input_table_is_what_deepvis_does() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    let doc = std::fs::read_to_string(&doc_path).expect("docs/reliability.md");
    let (head, rest) = doc.split_once(START).expect("table start marker");
    let (table, tail) = rest.split_once(END).expect("table end marker");

    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().canonicalize().unwrap();
    let w: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deepvis-weights/tests/fixtures")
        .canonicalize()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    make_files(&t, &w);

    let bless = std::env::var_os("DEEPVIS_BLESS").is_some();
    let mut out_rows = Vec::new();
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for row in table.lines() {
        let c = cells(row);
        // Header, separator and blank lines pass through; rows are | input | command | exit | says |.
        if c.len() != 4 || !c[1].starts_with('`') {
            out_rows.push(row.to_string());
            continue;
        }
        let command = unquote_code(&c[1]);
        let (code, line) = run_row(command, &t, &w, cache.path());
        checked += 1;
        let expected = (c[2].parse::<i32>().ok(), c[3].replace("\\|", "|"));
        if expected != (Some(code), line.clone()) {
            mismatches.push(format!(
                "{command}\n  table: {} {}\n  got:   {code} {line}",
                c[2], c[3]
            ));
        }
        out_rows.push(format!(
            "| {} | {} | {code} | {} |",
            c[0],
            c[1],
            line.replace('|', "\\|")
        ));
    }
    assert!(checked >= 25, "only {checked} rows");
    if bless {
        let new = format!("{head}{START}{}\n{END}{tail}", out_rows.join("\n"));
        std::fs::write(&doc_path, new).unwrap();
        return;
    }
    assert!(
        mismatches.is_empty(),
        "docs/reliability.md is out of date (DEEPVIS_BLESS=1 rewrites it):\n{}",
        mismatches.join("\n")
    );
}
