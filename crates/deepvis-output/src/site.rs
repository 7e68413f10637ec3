//! The atlas site: a page per model (its layers), per layer (the grid of its units) and per unit
//! at a stable path `M/L/N.html`, beside the PNGs. A unit page shows every optimized image of that
//! channel (one per run: other settings, seeds, diversity), its activation and quality score,
//! the dataset examples and receptive-field patches `deepvis examples` found, the settings, and
//! links to the previous and next unit, the layer and the model; arrow keys follow them.
//!
//! Pages are static and relative: they work from `file://`, any static server, or a copied
//! folder. Thumbnails load lazily; nothing is fetched from anywhere else.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gallery::{esc, fmt_activation, settings_summary, url_path};
use crate::{write_atomic, FilterRecord, LayerRun, Manifest, OutputError, ScoreRecord};

/// Dataset examples of one layer, `M/L/examples.json`: written by `deepvis examples`, read by
/// the site. Paths are relative to the layer's folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerExamples {
    pub model: String,
    pub layer: String,
    /// How many images were seen (the top-k of each unit is over these).
    pub images_seen: usize,
    /// Side of the receptive field in input pixels at the model's input size; None where a value
    /// sees the whole image (then no patches).
    pub receptive_field: Option<usize>,
    pub units: Vec<UnitExamples>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitExamples {
    pub unit: usize,
    /// Best first.
    pub top: Vec<Example>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The image as given (relative to the --images folder).
    pub source: String,
    /// The channel's maximum over positions in this image.
    pub value: f32,
    /// Where that maximum is, in the layer's output (row, column).
    pub at: (usize, usize),
    /// Thumbnail of the whole (model-sized) image, relative to the layer folder.
    pub image: String,
    /// The receptive-field crop around the maximum, relative to the layer folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
}

/// File name of a layer's dataset examples inside its folder.
pub const EXAMPLES_FILE: &str = "examples.json";

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:1rem 2rem;background:#f4f4f4;color:#222}\
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1rem 0 .3rem}\
nav{font-size:.9rem;margin:.3rem 0 .8rem}nav a{margin-right:1rem}\
.meta{color:#555;font-size:.85rem;margin:.2rem 0;word-break:break-all}\
section{background:#fff;border-radius:6px;padding:1rem;margin:1rem 0;box-shadow:0 1px 3px rgba(0,0,0,.12)}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(120px,1fr));gap:.6rem}\
.big{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.8rem}\
figure{margin:0;text-align:center}figure img{width:100%;height:auto;display:block;border-radius:3px;background:#ddd;image-rendering:auto}\
figcaption{font-size:.78rem;margin-top:.2rem;font-variant-numeric:tabular-nums;word-break:break-all}\
.none{color:#888;font-style:italic}kbd{border:1px solid #aaa;border-radius:3px;padding:0 .25rem;font-size:.8rem}\
";

/// Arrow keys follow the page's prev/next links, `u` its parent link (`rel` attributes).
const KEYS: &str = "<script>document.addEventListener('keydown',function(e){\
if(e.altKey||e.ctrlKey||e.metaKey)return;\
var r={ArrowLeft:'prev',ArrowRight:'next',u:'up',ArrowUp:'up'}[e.key];\
var a=r&&document.querySelector('a[rel=\"'+r+'\"]');if(a){location.href=a.getAttribute('href');}});</script>\n";

/// One layer of the site: its runs of channel images and its examples.
struct Layer<'a> {
    name: String,
    /// Folder relative to the output folder: `M/L`.
    dir: PathBuf,
    runs: Vec<&'a LayerRun>,
    examples: Option<LayerExamples>,
}

impl Layer<'_> {
    fn units(&self) -> Vec<usize> {
        let mut u: Vec<usize> = self
            .runs
            .iter()
            .flat_map(|r| r.filters.iter().map(|f| f.filter))
            .chain(
                self.examples
                    .iter()
                    .flat_map(|e| e.units.iter().map(|u| u.unit)),
            )
            .collect();
        u.sort_unstable();
        u.dedup();
        u
    }
}

/// Whether a run's records are channel images (`filters`/`atlas`), not objectives of `render`.
pub(crate) fn channel_dir(run: &LayerRun) -> Option<PathBuf> {
    let first = run.filters.first()?;
    let p = Path::new(&first.png);
    let name = p.file_name()?.to_string_lossy();
    name.starts_with("filter_")
        .then(|| p.parent().map(Path::to_path_buf))
        .flatten()
}

/// Writes the model index, layer pages and unit pages for everything in `manifest` and every
/// `M/L/examples.json` under `out`; returns the model index pages written.
pub fn write_site(manifest: &Manifest, out: &Path) -> Result<Vec<PathBuf>, OutputError> {
    // Layers by folder, in the manifest's order, then any that only have examples.
    let mut layers: Vec<Layer> = Vec::new();
    for run in &manifest.runs {
        let Some(dir) = channel_dir(run) else {
            continue;
        };
        match layers.iter_mut().find(|l| l.dir == dir) {
            Some(l) => l.runs.push(run),
            None => layers.push(Layer {
                name: run.layer.clone(),
                dir,
                runs: vec![run],
                examples: None,
            }),
        }
    }
    for path in examples_files(out) {
        let bytes = fs::read(&path).map_err(|e| OutputError::io("read", &path, e))?;
        let ex: LayerExamples =
            serde_json::from_slice(&bytes).map_err(|source| OutputError::CorruptManifest {
                path: path.clone(),
                source,
            })?;
        let dir = path
            .parent()
            .and_then(|p| p.strip_prefix(out).ok())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        match layers.iter_mut().find(|l| l.dir == dir) {
            Some(l) => l.examples = Some(ex),
            None => layers.push(Layer {
                name: ex.layer.clone(),
                dir,
                runs: Vec::new(),
                examples: Some(ex),
            }),
        }
    }
    // Models by folder (the layer folder's parent).
    let mut models: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
    for (i, l) in layers.iter().enumerate() {
        let m = l.dir.parent().map(Path::to_path_buf).unwrap_or_default();
        models.entry(m).or_default().push(i);
    }
    let mut written = Vec::new();
    for (mdir, idx) in &models {
        let mlayers: Vec<&Layer> = idx.iter().map(|&i| &layers[i]).collect();
        let page = out.join(mdir).join("index.html");
        write_atomic(&page, model_page(manifest, &mlayers).as_bytes())?;
        written.push(page);
        for (k, layer) in mlayers.iter().enumerate() {
            let prev = k.checked_sub(1).map(|p| mlayers[p]);
            let next = mlayers.get(k + 1).copied();
            write_atomic(
                &out.join(&layer.dir).join("index.html"),
                layer_page(manifest, layer, prev, next).as_bytes(),
            )?;
            let units = layer.units();
            for (j, &u) in units.iter().enumerate() {
                let prev = j.checked_sub(1).map(|p| units[p]);
                let next = units.get(j + 1).copied();
                write_atomic(
                    &out.join(&layer.dir).join(format!("{u}.html")),
                    unit_page(manifest, layer, u, prev, next).as_bytes(),
                )?;
            }
        }
    }
    Ok(written)
}

/// `out/*/*/examples.json`, sorted.
fn examples_files(out: &Path) -> Vec<PathBuf> {
    let dirs = |p: &Path| -> Vec<PathBuf> {
        fs::read_dir(p)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found: Vec<PathBuf> = dirs(out)
        .iter()
        .flat_map(|m| dirs(m))
        .map(|l| l.join(EXAMPLES_FILE))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
}

fn head(h: &mut String, title: &str) {
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n\
         <title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n",
        t = esc(title)
    );
}

fn tail(h: &mut String) {
    h.push_str(KEYS);
    h.push_str("</body>\n</html>\n");
}

fn link(h: &mut String, rel: &str, href: &str, text: &str) {
    let _ = write!(
        h,
        "<a rel=\"{rel}\" href=\"{}\">{}</a>",
        esc(href),
        esc(text)
    );
}

/// The file name of a record's PNG, which lives in its layer's folder.
fn local(png: &str) -> String {
    let name = Path::new(png)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    url_path(&name)
}

fn model_page(manifest: &Manifest, layers: &[&Layer]) -> String {
    let mut h = String::with_capacity(4096);
    head(&mut h, &format!("deepvis atlas: {}", manifest.model));
    h.push_str("<nav>");
    link(&mut h, "up", "../index.html", "all runs (gallery)");
    h.push_str("</nav>\n");
    let _ = writeln!(
        h,
        "<p class=\"meta\">weights: {} &middot; {}</p>",
        esc(manifest.weights.as_deref().unwrap_or("unknown")),
        esc(&manifest.tool)
    );
    h.push_str("<section>\n<div class=\"grid\">\n");
    for l in layers {
        let leaf = url_path(
            &l.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let units = l.units();
        let thumb = l
            .runs
            .first()
            .and_then(|r| r.filters.first())
            .map(|f| format!("{leaf}/{}", local(&f.png)))
            .or_else(|| {
                l.examples
                    .as_ref()
                    .and_then(|e| e.units.first()?.top.first())
                    .map(|e| format!("{leaf}/{}", url_path(&e.image)))
            });
        let img = thumb.map_or(String::new(), |t| {
            format!("<img src=\"{}\" loading=\"lazy\" alt=\"\">", esc(&t))
        });
        let _ = writeln!(
            h,
            "<figure><a href=\"{leaf}/index.html\">{img}</a><figcaption><a href=\"{leaf}/index.html\">{}</a><br>{} units</figcaption></figure>",
            esc(&l.name),
            units.len()
        );
    }
    h.push_str("</div>\n</section>\n");
    tail(&mut h);
    h
}

fn layer_page(
    manifest: &Manifest,
    layer: &Layer,
    prev: Option<&Layer>,
    next: Option<&Layer>,
) -> String {
    let mut h = String::with_capacity(8192);
    head(&mut h, &format!("{} · {}", manifest.model, layer.name));
    let sibling = |l: &Layer| {
        format!(
            "../{}/index.html",
            url_path(
                &l.dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        )
    };
    h.push_str("<nav>");
    link(&mut h, "up", "../index.html", "model");
    if let Some(p) = prev {
        link(&mut h, "prev", &sibling(p), &format!("← {}", p.name));
    }
    if let Some(n) = next {
        link(&mut h, "next", &sibling(n), &format!("{} →", n.name));
    }
    h.push_str("</nav>\n");
    for run in &layer.runs {
        let _ = writeln!(
            h,
            "<p class=\"meta\">seed {} &middot; {}{}</p>",
            run.seed,
            esc(&settings_summary(&run.settings)),
            run.grid.as_ref().map_or(String::new(), |g| format!(
                " &middot; <a href=\"{}\">grid sheet</a>",
                local(g)
            ))
        );
    }
    if let Some(e) = &layer.examples {
        let _ = writeln!(
            h,
            "<p class=\"meta\">dataset examples: top {} of {} images per unit</p>",
            e.units.first().map_or(0, |u| u.top.len()),
            e.images_seen
        );
    }
    h.push_str("<section>\n<div class=\"grid\">\n");
    for u in layer.units() {
        let rec = layer.runs.iter().find_map(|r| {
            r.filters
                .binary_search_by_key(&u, |f| f.filter)
                .ok()
                .map(|i| &r.filters[i])
        });
        let src = rec.map(|f| local(&f.png)).or_else(|| {
            let e = layer.examples.as_ref()?;
            let ue = e.units.iter().find(|x| x.unit == u)?;
            let ex = ue.top.first()?;
            Some(url_path(ex.patch.as_deref().unwrap_or(&ex.image)))
        });
        let img = src.map_or(String::new(), |s| {
            format!("<img src=\"{s}\" loading=\"lazy\" alt=\"unit {u}\">")
        });
        let _ = writeln!(
            h,
            "<figure><a href=\"{u}.html\">{img}</a><figcaption><a href=\"{u}.html\">unit {u}</a></figcaption></figure>"
        );
    }
    h.push_str("</div>\n</section>\n");
    tail(&mut h);
    h
}

/// A quality score in words; parts that are not finite numbers (recorded as null) are left out.
pub fn score_text(score: &ScoreRecord) -> String {
    let mut parts = Vec::new();
    if score.robust.is_finite() {
        parts.push(format!("robust {}", fmt_activation(score.robust)));
    }
    if score.final_value.is_finite() {
        parts.push(format!("final {}", fmt_activation(score.final_value)));
    }
    parts.push(format!("over {} views", score.views));
    format!("score: {}", parts.join(", "))
}

fn unit_page(
    manifest: &Manifest,
    layer: &Layer,
    unit: usize,
    prev: Option<usize>,
    next: Option<usize>,
) -> String {
    let mut h = String::with_capacity(8192);
    head(
        &mut h,
        &format!("{} · {} · unit {unit}", manifest.model, layer.name),
    );
    h.push_str("<nav>");
    if let Some(p) = prev {
        link(&mut h, "prev", &format!("{p}.html"), &format!("← unit {p}"));
    }
    if let Some(n) = next {
        link(&mut h, "next", &format!("{n}.html"), &format!("unit {n} →"));
    }
    link(&mut h, "up", "index.html", &format!("layer {}", layer.name));
    link(&mut h, "model", "../index.html", "model");
    h.push_str("<span class=\"meta\"><kbd>←</kbd> <kbd>→</kbd> <kbd>u</kbd></span></nav>\n");

    let recs: Vec<(&LayerRun, &FilterRecord)> = layer
        .runs
        .iter()
        .filter_map(|r| {
            r.filters
                .binary_search_by_key(&unit, |f| f.filter)
                .ok()
                .map(|i| (*r, &r.filters[i]))
        })
        .collect();
    if !recs.is_empty() {
        h.push_str("<section>\n<h2>Optimized</h2>\n<div class=\"big\">\n");
        for (run, f) in &recs {
            let src = local(&f.png);
            let score = f.score.as_ref().map(score_text);
            let raw = f.npy.as_ref().map_or(String::new(), |n| {
                format!(" &middot; <a href=\"{}\">raw values</a>", local(n))
            });
            let _ = writeln!(
                h,
                "<figure><a href=\"{src}\"><img src=\"{src}\" alt=\"unit {unit} optimized\"></a>\
                 <figcaption>activation {} &rarr; {}{}{raw}<br>seed {} &middot; {}</figcaption></figure>",
                fmt_activation(f.initial_activation),
                fmt_activation(f.final_activation),
                score.map_or(String::new(), |s| format!("<br>{}", esc(&s))),
                run.seed,
                esc(&settings_summary(&run.settings)),
            );
            // The other images of a diversity run, and the optimization as it went.
            if let Some(d) = &f.diversity {
                for (k, img) in d.images.iter().enumerate().skip(1) {
                    let src = local(img);
                    let _ = writeln!(
                        h,
                        "<figure><a href=\"{src}\"><img src=\"{src}\" loading=\"lazy\" alt=\"unit {unit} diverse {k}\"></a>\
                         <figcaption>diverse image {k} of {} &middot; mean similarity {:.3}</figcaption></figure>",
                        d.images.len(),
                        d.mean_similarity
                    );
                }
            }
            if let Some(g) = &f.gif {
                let src = local(g);
                let _ = writeln!(
                    h,
                    "<figure><img src=\"{src}\" loading=\"lazy\" alt=\"unit {unit} optimization\">\
                     <figcaption>the optimization, step by step</figcaption></figure>"
                );
            }
        }
        h.push_str("</div>\n</section>\n");
    }
    let ex = layer
        .examples
        .as_ref()
        .and_then(|e| e.units.iter().find(|u| u.unit == unit).map(|u| (e, u)));
    if let Some((e, ue)) = ex {
        let _ = writeln!(
            h,
            "<section>\n<h2>Dataset examples</h2>\n<p class=\"meta\">the {} of {} images that excite this unit most</p>\n<div class=\"grid\">",
            ue.top.len(),
            e.images_seen
        );
        for x in &ue.top {
            let _ = writeln!(
                h,
                "<figure><img src=\"{}\" loading=\"lazy\" alt=\"example\"><figcaption>{} &middot; {}</figcaption></figure>",
                url_path(&x.image),
                esc(&x.source),
                fmt_activation(x.value)
            );
        }
        h.push_str("</div>\n");
        if ue.top.iter().any(|x| x.patch.is_some()) {
            let _ = writeln!(
                h,
                "<h2>Patches</h2>\n<p class=\"meta\">the receptive field ({} px) around each image's maximum</p>\n<div class=\"grid\">",
                e.receptive_field.map_or("whole image".to_string(), |f| f.to_string())
            );
            for x in ue.top.iter().filter(|x| x.patch.is_some()) {
                let p = x.patch.as_deref().unwrap_or_default();
                let _ = writeln!(
                    h,
                    "<figure><img src=\"{}\" loading=\"lazy\" alt=\"patch\"><figcaption>{} at ({}, {})</figcaption></figure>",
                    url_path(p),
                    fmt_activation(x.value),
                    x.at.0,
                    x.at.1
                );
            }
            h.push_str("</div>\n");
        }
        h.push_str("</section>\n");
    }
    if recs.is_empty() && ex.is_none() {
        h.push_str("<p class=\"none\">Nothing recorded for this unit yet.</p>\n");
    }
    tail(&mut h);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(f: usize) -> FilterRecord {
        FilterRecord {
            filter: f,
            png: format!("m/l.1/filter_{f:04}.png"),
            npy: None,
            initial_activation: 0.5,
            final_activation: 9.0,
            seconds: 1.0,
            diverged: None,
            score: None,
            steps: None,
            gif: None,
            diversity: None,
        }
    }

    #[test]
    fn pages_link_neighbours_and_exist() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut m = Manifest::new("deepvis", "m", None, None);
        let s = json!({"steps": 3});
        for f in [0, 2, 5] {
            m.upsert_filter("l.1", &s, 0, rec(f));
        }
        m.upsert_filter(
            "l.2",
            &s,
            0,
            FilterRecord {
                png: "m/l.2/filter_0001.png".into(),
                ..rec(1)
            },
        );
        // A `render` objective is no unit.
        m.upsert_filter(
            "objective",
            &s,
            0,
            FilterRecord {
                png: "m/objectives/o/image_00.png".into(),
                ..rec(0)
            },
        );
        let written = write_site(&m, tmp.path()).expect("site");
        assert_eq!(written, vec![tmp.path().join("m/index.html")]);
        let unit2 = fs::read_to_string(tmp.path().join("m/l.1/2.html")).expect("unit page");
        assert!(unit2.contains("rel=\"prev\" href=\"0.html\""), "{unit2}");
        assert!(unit2.contains("rel=\"next\" href=\"5.html\""), "{unit2}");
        assert!(unit2.contains("src=\"filter_0002.png\""));
        assert!(unit2.contains("rel=\"up\" href=\"index.html\""));
        let first = fs::read_to_string(tmp.path().join("m/l.1/0.html")).expect("unit 0");
        assert!(!first.contains("rel=\"prev\""));
        let layer = fs::read_to_string(tmp.path().join("m/l.1/index.html")).expect("layer");
        assert!(layer.contains("href=\"5.html\"") && layer.contains("loading=\"lazy\""));
        assert!(
            layer.contains("rel=\"next\" href=\"../l.2/index.html\""),
            "{layer}"
        );
        let model = fs::read_to_string(tmp.path().join("m/index.html")).expect("model");
        assert!(model.contains("l.1/index.html") && model.contains("l.2/index.html"));
        assert!(!model.contains("objectives"));
        for page in [&unit2, &layer, &model] {
            assert!(!page.contains("http://") && !page.contains("https://"));
        }
    }

    #[test]
    fn diversity_images_scores_and_frames_show_on_unit_pages() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut m = Manifest::new("deepvis", "m", None, None);
        let s = json!({"steps": 3, "diversity": {"images": 3, "weight": 100.0}});
        m.upsert_filter(
            "l.1",
            &s,
            0,
            FilterRecord {
                score: Some(crate::ScoreRecord {
                    robust: 4.25,
                    final_value: 5.0,
                    views: 32,
                }),
                gif: Some("m/l.1/filter_0007.gif".into()),
                diversity: Some(crate::DiversityRecord {
                    images: (0..3)
                        .map(|k| match k {
                            0 => "m/l.1/filter_0007.png".to_string(),
                            k => format!("m/l.1/filter_0007_d{k}.png"),
                        })
                        .collect(),
                    similarity: vec![vec![1.0; 3]; 3],
                    mean_similarity: 0.375,
                }),
                ..rec(7)
            },
        );
        write_site(&m, tmp.path()).expect("site");
        let unit = fs::read_to_string(tmp.path().join("m/l.1/7.html")).expect("unit page");
        for src in [
            "filter_0007.png",
            "filter_0007_d1.png",
            "filter_0007_d2.png",
            "filter_0007.gif",
        ] {
            assert!(unit.contains(&format!("src=\"{src}\"")), "{src}: {unit}");
        }
        assert!(unit.contains("mean similarity 0.375"), "{unit}");
        assert!(unit.contains("robust 4.2500"), "{unit}");
    }

    #[test]
    fn examples_show_on_unit_pages() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ex = LayerExamples {
            model: "m".into(),
            layer: "l.1".into(),
            images_seen: 3,
            receptive_field: Some(35),
            units: vec![UnitExamples {
                unit: 4,
                top: vec![Example {
                    source: "cat <1>.jpg".into(),
                    value: 2.5,
                    at: (3, 4),
                    image: "examples/img_0001.jpg".into(),
                    patch: Some("examples/4/patch_0.png".into()),
                }],
            }],
        };
        let path = tmp.path().join("m/l.1").join(EXAMPLES_FILE);
        write_atomic(&path, &serde_json::to_vec(&ex).unwrap()).expect("write");
        let m = Manifest::new("deepvis", "m", None, None);
        write_site(&m, tmp.path()).expect("site");
        let unit = fs::read_to_string(tmp.path().join("m/l.1/4.html")).expect("unit 4");
        assert!(unit.contains("src=\"examples/img_0001.jpg\""));
        assert!(unit.contains("src=\"examples/4/patch_0.png\""));
        assert!(unit.contains("cat &lt;1&gt;.jpg"));
        assert!(unit.contains("(35 px)") && unit.contains("at (3, 4)"));
    }

    #[test]
    fn scores_read_as_words() {
        let s = ScoreRecord {
            robust: 1.5,
            final_value: 2.0,
            views: 8,
        };
        assert_eq!(
            score_text(&s),
            "score: robust 1.5000, final 2.0000, over 8 views"
        );
        let nan = ScoreRecord {
            robust: f32::NAN,
            ..s
        };
        assert_eq!(score_text(&nan), "score: final 2.0000, over 8 views");
    }
}
