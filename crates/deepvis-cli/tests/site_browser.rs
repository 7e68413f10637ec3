//! The atlas site in headless Chromium (Debian's `chromium`, which `.ci/run` installs): a harness
//! page walks the site from the model index through every link, loads each page in a frame,
//! forces its lazy images to load and checks each one decodes, checks that no link is broken,
//! presses → on a unit page and checks it went to the next unit; then a screenshot of a unit
//! page is taken (saved under target/ to look at). Skipped, with a note, where no Chromium is
//! installed.

mod common;
use common::{deepvis, ok};
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .find_map(|name| {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()?;
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!p.is_empty()).then(|| PathBuf::from(p))
    })
}

const HARNESS: &str = r#"<!DOCTYPE html><html><body><pre id="result">running</pre>
<iframe id="f" width="1200" height="800"></iframe>
<script>
const start = new URL('efficientnet_lite0/index.html', location.href).href;
const seen = new Set([start]), queue = [start], broken = [], badImages = [], checked = [];
const frame = document.getElementById('f');
function load(url) {
  return new Promise(res => { frame.onload = () => res(); frame.src = url; });
}
function imageOk(src) {
  return new Promise(res => { const i = new Image(); i.onload = () => res(i.naturalWidth > 0);
    i.onerror = () => res(false); i.src = src; });
}
async function visit(url) {
  await load(url);
  let doc;
  try { doc = frame.contentDocument; } catch (e) { doc = null; }
  if (!doc || !doc.body || frame.contentWindow.location.href !== url || !doc.querySelector('h1')) {
    broken.push(url); return;
  }
  checked.push(url);
  for (const img of Array.from(doc.images)) {
    img.loading = 'eager';
    if (!(await imageOk(img.src))) badImages.push(url + ' -> ' + img.getAttribute('src'));
  }
  for (const a of Array.from(doc.querySelectorAll('a[href]'))) {
    const target = new URL(a.getAttribute('href'), url).href;
    if (target.endsWith('.png')) {
      if (!(await imageOk(target))) badImages.push(url + ' -> ' + a.getAttribute('href'));
    } else if (target.endsWith('.html') && !seen.has(target)
               && target.startsWith(new URL('.', start).href) && seen.size < 80) {
      seen.add(target); queue.push(target);
    } else if (!target.endsWith('.html') && !target.endsWith('.png') && !target.endsWith('.npy')) {
      broken.push(url + ' -> ' + a.getAttribute('href'));
    }
  }
}
async function keys() {
  const unit = new URL('efficientnet_lite0/_blocks.0/0.html', location.href).href;
  await load(unit);
  const moved = new Promise(res => { frame.onload = () => res(frame.contentWindow.location.href); });
  frame.contentDocument.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight'}));
  return await moved;
}
(async () => {
  while (queue.length) await visit(queue.shift());
  const afterKey = await keys();
  document.getElementById('result').textContent = 'RESULT ' + JSON.stringify(
    {pages: checked.length, broken, badImages, afterKey});
})();
</script></body></html>"#;

fn result(dom: &str) -> serde_json::Value {
    let at = dom
        .find("RESULT ")
        .expect("the harness finished (RESULT in the DOM)");
    let rest = &dom[at + 7..];
    let end = rest.find("</pre>").expect("end of result");
    let json = rest[..end]
        .replace("&quot;", "\"")
        .replace("&gt;", ">")
        .replace("&lt;", "<")
        .replace("&amp;", "&");
    serde_json::from_str(&json).expect("result JSON")
}

fn run_chromium(bin: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--allow-file-access-from-files",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .args(args)
        .output()
        .expect("chromium runs")
}

#[test]
fn site_loads_in_headless_chromium() {
    let Some(bin) = chromium() else {
        eprintln!(
            "note: no chromium installed; the browser check is skipped (apt-get install chromium)"
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("site");
    let o = out.to_str().expect("utf-8");
    ok(deepvis(&[
        "atlas",
        "--layers",
        "_blocks.0,_blocks.3",
        "--filters",
        "0..4",
        "--size",
        "48",
        "--steps",
        "8",
        "--out",
        o,
        "-q",
    ]));
    let photos = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/photos");
    ok(deepvis(&[
        "examples",
        "--images",
        photos.to_str().unwrap(),
        "--layer",
        "_blocks.3",
        "--filters",
        "0..4",
        "--top",
        "4",
        "--size",
        "96",
        "--out",
        o,
        "-q",
    ]));
    std::fs::write(out.join("harness.html"), HARNESS).expect("harness");
    let url = format!("file://{}", out.join("harness.html").display());
    let dom = run_chromium(&bin, &["--virtual-time-budget=60000", "--dump-dom", &url]);
    let text = String::from_utf8_lossy(&dom.stdout);
    let r = result(&text);
    eprintln!("{r}");
    assert_eq!(r["broken"], serde_json::json!([]), "{r}");
    assert_eq!(r["badImages"], serde_json::json!([]), "{r}");
    // Model index, 2 layer pages, 4 + 4 unit pages (the gallery above them is not crawled).
    assert!(r["pages"].as_u64().unwrap() >= 11, "{r}");
    assert!(
        r["afterKey"]
            .as_str()
            .unwrap()
            .ends_with("_blocks.0/1.html"),
        "→ on unit 0 goes to unit 1: {r}"
    );

    // A screenshot of a unit page with optimized images, examples and patches, kept to look at.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("site_unit_page.png");
    let _ = std::fs::remove_file(&shot);
    let page = format!(
        "file://{}",
        out.join("efficientnet_lite0/_blocks.3/2.html").display()
    );
    run_chromium(
        &bin,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,1400",
            "--virtual-time-budget=5000",
            &page,
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}
