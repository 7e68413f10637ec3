//! Module paths of PyTorch-exported ONNX graphs, recovered from node names and metadata.
//!
//! A user asks for a layer by its PyTorch module path (`layer4.1`, `features.12`); an ONNX graph
//! only has value names. Both PyTorch exporters leave the module scope of every node behind:
//!
//! * **TorchScript exporter** (`torch.onnx.export(..., dynamo=False)`): the node *name* is the
//!   scope chain plus the op, `/layer4/layer4.1/relu_1/Relu`. Each component is the module's
//!   name from its last non-numeric atom on (`layer4.1` for `layer4.1`, `conv1` for
//!   `layer4.1.conv1`, `block.0.0` for `features.1.block.0.0`), so a component adds exactly its
//!   last atom to the parent's path. A repeated call of a module gets `_k` appended to that
//!   component (`relu_1` is the second call of `relu`, `/blk_1/Add` a node of the second call
//!   of `blk`; the children of that second call show up as `/blk/conv_1/...`). Nodes outside
//!   every module are `/Flatten`, nodes made by the exporter `Identity_0`.
//! * **Dynamo exporter** (`dynamo=True`): node `metadata_props` entry
//!   `pkg.torch.onnx.name_scopes` holds a Python list literal of the full module paths from the
//!   root, then the FX node name: `['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']`
//!   (`pkg.torch.onnx.class_hierarchy` is parallel: `['torchvision.models.resnet.ResNet', …,
//!   'aten.relu.default']`). Repeated calls are not numbered there.
//!
//! [`module_outputs`] then applies the rule: a module call's output is the last value produced
//! inside its scope that is used outside it (by a later node or as a graph output).
//!
//! Known limits (all checked against real exports in the tests):
//! * Both exporters fold BatchNorm into the preceding Conv by default. TorchScript names the
//!   fused node after the Conv (so `conv1` maps to the post-BN value and `bn1` has no nodes);
//!   dynamo names it after the BatchNorm (`bn1` maps to it, `conv1` has no nodes). The pre-BN
//!   Conv output does not exist in either graph.
//! * TorchScript's `_k` call suffix is indistinguishable from a module really named `name_k`
//!   (a module `relu_1` next to a twice-called `relu` even shares the scope `relu_1`).
//!   [`ts_scope_with`] keeps `name_k` when the caller knows a module of that path exists, e.g.
//!   from parameter names (see [`modules_from_initializers`]).
//! * Calls are told apart by contiguity in graph order (and, for a node's innermost module, the
//!   TorchScript call index): two back-to-back calls of a *container* module with no other node
//!   between them are seen as one call.

use std::collections::{BTreeMap, HashMap, HashSet};

/// The innermost module scope of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Dotted module path as in `named_modules()` (`layer4.1.relu`).
    pub path: String,
    /// Which call of that module the node belongs to, 0-based, where the exporter records it
    /// (TorchScript `_k` suffix); 0 otherwise.
    pub call: usize,
}

/// A graph node as [`module_outputs`] needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopedNode {
    /// Innermost module path; `None` for nodes outside every module (root level) or unknown.
    pub scope: Option<String>,
    /// Call index of the innermost module (see [`Scope::call`]).
    pub call: usize,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

impl ScopedNode {
    pub fn new(scope: Option<Scope>, inputs: Vec<String>, outputs: Vec<String>) -> Self {
        let (scope, call) = match scope {
            Some(s) => (Some(s.path), s.call),
            None => (None, 0),
        };
        ScopedNode {
            scope,
            call,
            inputs,
            outputs,
        }
    }
}

/// The output value of one module call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleOutput {
    /// `PATH` for the last call (what a forward hook on PATH sees), `PATH#k` for call k
    /// (0-based) of a module called more than once.
    pub key: String,
    pub path: String,
    pub call: usize,
    /// How many calls of `path` the graph shows.
    pub calls: usize,
    /// The ONNX value name.
    pub value: String,
}

/// Splits `name_k` into (`name`, k) when it ends in `_` + digits (no leading zero unless "0").
fn split_call_suffix(atom: &str) -> (&str, usize) {
    if let Some(pos) = atom.rfind('_') {
        let (base, digits) = (&atom[..pos], &atom[pos + 1..]);
        if !base.is_empty()
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'))
        {
            if let Ok(k) = digits.parse::<usize>() {
                return (base, k);
            }
        }
    }
    (atom, 0)
}

/// TorchScript node name `/a/a.0/relu_1/Relu` → (scope components `["a", "a.0", "relu_1"]`,
/// op part `"Relu"`). `None` when the name does not start with `/` (exporter-made nodes such
/// as `Identity_0`). A root-level node (`/Flatten`) has no components.
pub fn ts_components(node_name: &str) -> Option<(Vec<&str>, &str)> {
    let rest = node_name.strip_prefix('/')?;
    let mut parts: Vec<&str> = rest.split('/').collect();
    let op = parts.pop()?;
    if op.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    Some((parts, op))
}

/// The innermost module scope of a TorchScript-exported node (`/layer4/layer4.1/relu_1/Relu` →
/// `layer4.1.relu`, call 1; `/features/features.0/Conv` → `features.0`, call 0). `None` for
/// root-level and exporter-made nodes. Every `_k` suffix is read as a call index; see
/// [`ts_scope_with`] to keep real module names that end in `_k`.
pub fn ts_scope(node_name: &str) -> Option<Scope> {
    ts_scope_with(node_name, |_| false)
}

/// [`ts_scope`], but a component `name_k` is kept whole (call 0) when `is_module` says the path
/// with it is a real module.
pub fn ts_scope_with(node_name: &str, is_module: impl Fn(&str) -> bool) -> Option<Scope> {
    let (comps, _op) = ts_components(node_name)?;
    if comps.is_empty() {
        return None;
    }
    let mut path = String::new();
    let mut call = 0;
    for comp in comps {
        // A component names its module from its last non-numeric atom on; where the atoms
        // before its last are the end of the path so far (`layer4` then `layer4.1`) it adds
        // only that last atom, else all of them: a child of a container that is never called
        // itself (a ModuleList, `/_blocks.3/Add`) has no component for the container.
        let (head, atom) = match comp.rsplit_once('.') {
            Some((head, atom)) => (Some(head), atom),
            None => (None, comp),
        };
        let nested = head.is_none_or(|h| path == h || path.ends_with(&format!(".{h}")));
        let add = if nested { atom } else { comp };
        let prefix_len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(add);
        let (base, k) = split_call_suffix(atom);
        if k > 0 || base.len() != atom.len() {
            if is_module(&path) {
                call = 0;
            } else {
                path.truncate(prefix_len);
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&add[..add.len() - (atom.len() - base.len())]);
                call = k;
            }
        } else {
            call = 0;
        }
    }
    Some(Scope { path, call })
}

/// Module paths implied by initializer names such as `layer1.0.conv1.weight` or
/// `features.4.running_mean` (everything before the last atom), with all their ancestors.
/// Names without a dot or with characters a module path cannot have (`onnx::Conv_117`) are
/// skipped.
pub fn modules_from_initializers<'a>(names: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    let mut set = HashSet::new();
    for n in names {
        if n.contains(':') || n.contains('/') {
            continue;
        }
        let Some((module, _param)) = n.rsplit_once('.') else {
            continue;
        };
        let mut p = module;
        loop {
            if p.is_empty() || !set.insert(p.to_string()) {
                break;
            }
            match p.rsplit_once('.') {
                Some((parent, _)) => p = parent,
                None => break,
            }
        }
    }
    set
}

/// Parses a Python list-of-strings literal as the dynamo exporter writes it:
/// `['', 'layer1', 'layer1.0']` (single or double quotes, backslash escapes).
pub fn parse_py_str_list(s: &str) -> Option<Vec<String>> {
    let s = s.trim();
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        let q = match chars.next() {
            None => break,
            Some(q @ ('\'' | '"')) => q,
            Some(_) => return None,
        };
        let mut item = String::new();
        loop {
            match chars.next()? {
                '\\' => {
                    let e = chars.next()?;
                    item.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                }
                c if c == q => break,
                c => item.push(c),
            }
        }
        out.push(item);
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(_) => return None,
        }
    }
    Some(out)
}

/// The innermost module path of a dynamo-exported node from its `pkg.torch.onnx.name_scopes`
/// value: `"['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']"` → `layer1.0.relu`. The
/// first entry is the root (`''`), the last the FX node (an op, not a module), so a root-level
/// node (`"['', 'view']"`) gives `None`, as does an unparsable value.
pub fn dynamo_scope(name_scopes: &str) -> Option<String> {
    let list = parse_py_str_list(name_scopes)?;
    if list.len() < 3 {
        return None;
    }
    let p = &list[list.len() - 2];
    if p.is_empty() {
        None
    } else {
        Some(p.clone())
    }
}

/// The scope of a node from whichever exporter made it: dynamo metadata when present, else the
/// TorchScript node name.
pub fn node_scope(node_name: &str, name_scopes: Option<&str>) -> Option<Scope> {
    match name_scopes {
        Some(ns) => dynamo_scope(ns).map(|path| Scope { path, call: 0 }),
        None => ts_scope(node_name),
    }
}

/// `a.b.c` → `a`, `a.b`, `a.b.c`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('.')
        .map(move |(i, _)| &path[..i])
        .chain(std::iter::once(path))
}

/// For every module (and every call of a module called more than once) the ONNX value that is
/// its output: the last value produced inside the call's nodes that is used outside them (by
/// any other node, or as a graph output).
///
/// `nodes` are in graph order. A call of module M is a maximal run of consecutive nodes whose
/// scope is M or inside M; a node with `scope: None` ends every run; between two consecutive
/// nodes both directly in M (innermost scope M) a change of `call` starts a new call. Keys are
/// `PATH` for the last call (what a forward hook sees) and also `PATH#k` (k = 0, 1, …) for
/// each call of a module with more than one. The result is ordered by where each call ends
/// (so inner modules before the blocks that contain them), `PATH` right after the last
/// `PATH#k`. A call whose values are all used only inside it gets no entry.
pub fn module_outputs(nodes: &[ScopedNode], graph_outputs: &[String]) -> Vec<ModuleOutput> {
    // consumers of each value: the largest and smallest consuming node index
    let mut first_use: HashMap<&str, usize> = HashMap::new();
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for v in &n.inputs {
            if v.is_empty() {
                continue;
            }
            first_use.entry(v.as_str()).or_insert(i);
            last_use.insert(v.as_str(), i);
        }
    }
    let graph_out: HashSet<&str> = graph_outputs.iter().map(|s| s.as_str()).collect();
    // A value produced inside [s, e] is used outside when it is a graph output or some consumer
    // lies outside [s, e]. Consumers come after the producer in a topologically sorted graph,
    // but check both ends anyway.
    let used_outside = |v: &str, s: usize, e: usize| -> bool {
        if graph_out.contains(v) {
            return true;
        }
        let (Some(&f), Some(&l)) = (first_use.get(v), last_use.get(v)) else {
            return false;
        };
        if f < s || l > e {
            return true;
        }
        // some consumer strictly between may still be outside? No: [s, e] is contiguous.
        false
    };

    // runs per module: (start, end) in node indices
    let mut runs: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    let mut open: HashMap<&str, usize> = HashMap::new(); // module -> start of its open run
    let mut prev: Option<(&str, usize)> = None; // previous node's (innermost scope, call)
    for (i, n) in nodes.iter().enumerate() {
        let cur: HashSet<&str> = match &n.scope {
            Some(p) => ancestors(p).collect(),
            None => HashSet::new(),
        };
        // close runs of modules this node is not inside, and the innermost module's run when
        // its call index changes between two nodes directly in it
        let split_innermost = match (prev, n.scope.as_deref()) {
            (Some((pp, pc)), Some(p)) if pp == p && pc != n.call => Some(p),
            _ => None,
        };
        let mut closing: Vec<&str> = open
            .keys()
            .copied()
            .filter(|m| !cur.contains(m) || Some(*m) == split_innermost)
            .collect();
        closing.sort_unstable();
        for m in closing {
            let s = open.remove(m).unwrap();
            runs.entry(m).or_default().push((s, i - 1));
        }
        for m in cur {
            open.entry(m).or_insert(i);
        }
        prev = n.scope.as_deref().map(|p| (p, n.call));
    }
    let end = nodes.len();
    for (m, s) in open {
        runs.entry(m).or_default().push((s, end - 1));
    }

    let mut found: Vec<(usize, usize, ModuleOutput)> = Vec::new(); // (end, order, output)
    for (m, rs) in &runs {
        let mut rs = rs.clone();
        rs.sort_unstable();
        let calls = rs.len();
        for (k, &(s, e)) in rs.iter().enumerate() {
            let mut value = None;
            'scan: for i in (s..=e).rev() {
                for v in nodes[i].outputs.iter().rev() {
                    if !v.is_empty() && used_outside(v, s, e) {
                        value = Some(v.clone());
                        break 'scan;
                    }
                }
            }
            let Some(value) = value else { continue };
            if calls > 1 {
                found.push((
                    e,
                    0,
                    ModuleOutput {
                        key: format!("{m}#{k}"),
                        path: m.to_string(),
                        call: k,
                        calls,
                        value: value.clone(),
                    },
                ));
            }
            if k + 1 == calls {
                found.push((
                    e,
                    1,
                    ModuleOutput {
                        key: m.to_string(),
                        path: m.to_string(),
                        call: k,
                        calls,
                        value,
                    },
                ));
            }
        }
    }
    // by end of call; for equal ends, deeper modules first (they end "inside" their parents)
    found.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| {
                let da = a.2.path.matches('.').count();
                let db = b.2.path.matches('.').count();
                db.cmp(&da)
            })
            .then_with(|| a.2.path.cmp(&b.2.path))
            .then_with(|| a.1.cmp(&b.1))
    });
    found.into_iter().map(|(_, _, o)| o).collect()
}

/// [`module_outputs`] as a map key → value name.
pub fn module_output_map(
    nodes: &[ScopedNode],
    graph_outputs: &[String],
) -> BTreeMap<String, String> {
    module_outputs(nodes, graph_outputs)
        .into_iter()
        .map(|o| (o.key, o.value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(path: &str, call: usize) -> Option<Scope> {
        Some(Scope {
            path: path.to_string(),
            call,
        })
    }

    #[test]
    fn ts_names() {
        assert_eq!(
            ts_scope("/layer4/layer4.1/relu_1/Relu"),
            sc("layer4.1.relu", 1)
        );
        assert_eq!(
            ts_scope("/layer4/layer4.1/relu/Relu"),
            sc("layer4.1.relu", 0)
        );
        assert_eq!(ts_scope("/features/features.0/Conv"), sc("features.0", 0));
        assert_eq!(
            ts_scope("/features/features.1/block/block.0/block.0.0/Conv"),
            sc("features.1.block.0.0", 0)
        );
        assert_eq!(
            ts_scope("/layer2/layer2.0/downsample/downsample.0/Conv"),
            sc("layer2.0.downsample.0", 0)
        );
        assert_eq!(ts_scope("/layer1/layer1.0/Add"), sc("layer1.0", 0));
        assert_eq!(ts_scope("/seq/seq.1/seq.1.1/Conv"), sc("seq.1.1", 0));
        assert_eq!(ts_scope("/0/Conv"), sc("0", 0));
        assert_eq!(ts_scope("/blk_1/Add"), sc("blk", 1));
        assert_eq!(ts_scope("/blk/conv_1/Conv"), sc("blk.conv", 1));
        assert_eq!(
            ts_scope("/features/features.12/features.12.2/Mul"),
            sc("features.12.2", 0)
        );
        // Children of a ModuleList that is never called itself (EfficientNet-Lite's
        // `_blocks`): no `/_blocks/` component, so the child's component carries the whole path.
        assert_eq!(ts_scope("/_blocks.3/Add"), sc("_blocks.3", 0));
        assert_eq!(
            ts_scope("/_blocks.3/_depthwise_conv/Conv"),
            sc("_blocks.3._depthwise_conv", 0)
        );
        assert_eq!(ts_scope("/net/stages.2/Add"), sc("net.stages.2", 0));
        assert_eq!(ts_scope("/_blocks.3_1/Add"), sc("_blocks.3", 1));
        assert_eq!(ts_scope("/Flatten"), None);
        assert_eq!(ts_scope("Identity_0"), None);
        assert_eq!(ts_scope(""), None);
        assert_eq!(ts_scope("//x"), None);
        assert_eq!(
            ts_components("/a/a.0/relu_1/Relu"),
            Some((vec!["a", "a.0", "relu_1"], "Relu"))
        );
        assert_eq!(ts_components("/Flatten"), Some((vec![], "Flatten")));
    }

    #[test]
    fn ts_call_suffix_versus_real_names() {
        // a module really named conv_1
        let known = modules_from_initializers([
            "conv_1.weight",
            "conv_1.bias",
            "onnx::Conv_17",
            "fc.weight",
        ]);
        assert!(known.contains("conv_1") && known.contains("fc") && known.len() == 2);
        assert_eq!(
            ts_scope_with("/conv_1/Conv", |p| known.contains(p)),
            sc("conv_1", 0)
        );
        assert_eq!(ts_scope("/conv_1/Conv"), sc("conv", 1));
        assert_eq!(
            ts_scope_with("/relu_1/Relu", |p| known.contains(p)),
            sc("relu", 1)
        );
        let nested = modules_from_initializers(["layer1.0.conv1.weight"]);
        assert!(
            nested.contains("layer1")
                && nested.contains("layer1.0")
                && nested.contains("layer1.0.conv1")
        );
        // not a call suffix
        assert_eq!(ts_scope("/stage_/Conv"), sc("stage_", 0));
        assert_eq!(ts_scope("/res_01/Conv"), sc("res_01", 0));
        assert_eq!(ts_scope("/_3/Conv"), sc("_3", 0));
    }

    #[test]
    fn dynamo_names() {
        let v = "['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']";
        assert_eq!(
            parse_py_str_list(v).unwrap(),
            vec!["", "layer1", "layer1.0", "layer1.0.relu", "relu_1"]
        );
        assert_eq!(dynamo_scope(v).as_deref(), Some("layer1.0.relu"));
        assert_eq!(dynamo_scope("['', 'view']"), None);
        assert_eq!(dynamo_scope("['', 'fc', 'linear']").as_deref(), Some("fc"));
        assert_eq!(dynamo_scope("not a list"), None);
        assert_eq!(parse_py_str_list("[]").unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_py_str_list(r#"["a", 'b\'c']"#).unwrap(),
            vec!["a", "b'c"]
        );
        assert_eq!(parse_py_str_list("['a' 'b']"), None);
        assert_eq!(node_scope("node_relu_1", Some(v)), sc("layer1.0.relu", 0));
        assert_eq!(
            node_scope("/layer1/layer1.0/relu_1/Relu", None),
            sc("layer1.0.relu", 1)
        );
    }

    fn node(scope: &str, call: usize, inputs: &[&str], outputs: &[&str]) -> ScopedNode {
        ScopedNode {
            scope: if scope.is_empty() {
                None
            } else {
                Some(scope.to_string())
            },
            call,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn basic_block_outputs() {
        // a torchvision BasicBlock with its relu called twice, then a root-level flatten and fc
        let nodes = vec![
            node("conv1", 0, &["x", "w"], &["c1"]),
            node("relu", 0, &["c1"], &["r1"]),
            node("layer1.0.conv1", 0, &["r1", "w1"], &["a"]),
            node("layer1.0.relu", 0, &["a"], &["b"]),
            node("layer1.0.conv2", 0, &["b", "w2"], &["c"]),
            node("layer1.0", 0, &["c", "r1"], &["d"]),
            node("layer1.0.relu", 1, &["d"], &["e"]),
            node("", 0, &["e"], &["f"]),
            node("fc", 0, &["f", "wf"], &["y"]),
        ];
        let outs = module_outputs(&nodes, &["y".to_string()]);
        let m: BTreeMap<_, _> = outs
            .iter()
            .map(|o| (o.key.as_str(), o.value.as_str()))
            .collect();
        assert_eq!(m["conv1"], "c1");
        assert_eq!(m["relu"], "r1");
        assert_eq!(m["layer1.0.relu#0"], "b");
        assert_eq!(m["layer1.0.relu#1"], "e");
        assert_eq!(m["layer1.0.relu"], "e");
        assert_eq!(m["layer1.0"], "e");
        assert_eq!(m["layer1"], "e");
        assert_eq!(m["fc"], "y");
        assert_eq!(m.len(), 10);
        let keys: Vec<&str> = outs.iter().map(|o| o.key.as_str()).collect();
        let pos = |k: &str| keys.iter().position(|x| *x == k).unwrap();
        assert!(pos("layer1.0.relu#1") < pos("layer1.0.relu"));
        assert!(pos("layer1.0.relu") < pos("layer1.0"));
        assert!(pos("layer1.0") < pos("layer1"));
        let r = outs.iter().find(|o| o.key == "layer1.0.relu").unwrap();
        assert_eq!((r.call, r.calls), (1, 2));
    }

    #[test]
    fn back_to_back_calls_split_by_call_index() {
        // TorchScript relu(relu(x)): /relu/Relu then /relu_1/Relu
        let nodes = vec![
            node("relu", 0, &["x"], &["a"]),
            node("relu", 1, &["a"], &["b"]),
            node("head", 0, &["b"], &["y"]),
        ];
        let m = module_output_map(&nodes, &["y".to_string()]);
        assert_eq!(m["relu#0"], "a");
        assert_eq!(m["relu#1"], "b");
        assert_eq!(m["relu"], "b");
        assert_eq!(m["head"], "y");
    }

    #[test]
    fn inner_values_and_multiple_outputs() {
        // a module with an internal value used only inside and one produced twice to outside;
        // the last produced one wins; a module whose values are all used inside is skipped
        let nodes = vec![
            node("m.a", 0, &["x"], &["t"]),
            node("m", 0, &["t"], &["u"]),
            node("m", 0, &["t", "u"], &["v"]),
            node("n", 0, &["u"], &["w"]),
            node("n", 0, &["v", "w"], &["z"]),
        ];
        let m = module_output_map(&nodes, &["z".to_string()]);
        assert_eq!(m["m.a"], "t");
        assert_eq!(m["m"], "v");
        assert_eq!(m["n"], "z");
        let m2 = module_output_map(&nodes, &[]);
        assert!(!m2.contains_key("n"));
    }

    // ---------------------------------------------------------------- real exports

    /// Minimal JSON reader for the committed test data (no serde in this crate).
    #[derive(Debug, Clone)]
    #[allow(dead_code)]
    enum J {
        Null,
        Bool(bool),
        Num(f64),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    impl J {
        fn get(&self, k: &str) -> &J {
            match self {
                J::Obj(v) => v
                    .iter()
                    .find(|(kk, _)| kk == k)
                    .map(|(_, v)| v)
                    .unwrap_or(&J::Null),
                _ => &J::Null,
            }
        }
        fn str(&self) -> Option<&str> {
            match self {
                J::Str(s) => Some(s),
                _ => None,
            }
        }
        fn arr(&self) -> &[J] {
            match self {
                J::Arr(v) => v,
                _ => &[],
            }
        }
        fn strs(&self) -> Vec<String> {
            self.arr()
                .iter()
                .filter_map(|j| j.str().map(String::from))
                .collect()
        }
        fn entries(&self) -> &[(String, J)] {
            match self {
                J::Obj(v) => v,
                _ => &[],
            }
        }
    }

    fn parse_json(s: &str) -> J {
        fn ws(b: &[u8], i: &mut usize) {
            while *i < b.len() && (b[*i] as char).is_ascii_whitespace() {
                *i += 1;
            }
        }
        fn string(b: &[u8], i: &mut usize) -> String {
            assert_eq!(b[*i], b'"');
            *i += 1;
            let mut out: Vec<u8> = Vec::new();
            loop {
                let c = b[*i];
                *i += 1;
                match c {
                    b'"' => break,
                    b'\\' => {
                        let e = b[*i];
                        *i += 1;
                        match e {
                            b'n' => out.push(b'\n'),
                            b't' => out.push(b'\t'),
                            b'r' => out.push(b'\r'),
                            b'b' => out.push(8),
                            b'f' => out.push(12),
                            b'u' => {
                                let h = std::str::from_utf8(&b[*i..*i + 4]).unwrap();
                                *i += 4;
                                let cp = u32::from_str_radix(h, 16).unwrap();
                                let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            }
                            other => out.push(other),
                        }
                    }
                    c => out.push(c),
                }
            }
            String::from_utf8(out).unwrap()
        }
        fn value(b: &[u8], i: &mut usize) -> J {
            ws(b, i);
            match b[*i] {
                b'{' => {
                    *i += 1;
                    let mut v = Vec::new();
                    loop {
                        ws(b, i);
                        if b[*i] == b'}' {
                            *i += 1;
                            break;
                        }
                        let k = string(b, i);
                        ws(b, i);
                        assert_eq!(b[*i], b':');
                        *i += 1;
                        v.push((k, value(b, i)));
                        ws(b, i);
                        if b[*i] == b',' {
                            *i += 1;
                        }
                    }
                    J::Obj(v)
                }
                b'[' => {
                    *i += 1;
                    let mut v = Vec::new();
                    loop {
                        ws(b, i);
                        if b[*i] == b']' {
                            *i += 1;
                            break;
                        }
                        v.push(value(b, i));
                        ws(b, i);
                        if b[*i] == b',' {
                            *i += 1;
                        }
                    }
                    J::Arr(v)
                }
                b'"' => J::Str(string(b, i)),
                b'n' => {
                    *i += 4;
                    J::Null
                }
                b't' => {
                    *i += 4;
                    J::Bool(true)
                }
                b'f' => {
                    *i += 5;
                    J::Bool(false)
                }
                _ => {
                    let s = *i;
                    while *i < b.len()
                        && matches!(b[*i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                    {
                        *i += 1;
                    }
                    J::Num(std::str::from_utf8(&b[s..*i]).unwrap().parse().unwrap())
                }
            }
        }
        let b = s.as_bytes();
        let mut i = 0;
        value(b, &mut i)
    }

    /// Checks the rule against PyTorch hooks + onnxruntime on one committed export:
    /// * every key the rule returns is a hooked module call, and its value is numerically equal
    ///   to that hook output, or (a Conv2d whose BatchNorm2d the exporter folded into it) to
    ///   the BatchNorm2d's hook output;
    /// * every hook output that exists in the graph is returned under its own key or, for the
    ///   modules that left no node (BatchNorm folded into the Conv by TorchScript), under
    ///   another module's key.
    #[derive(Debug, Default)]
    struct Tally {
        /// the rule's value equals the hook output
        exact: usize,
        /// Conv2d with its BatchNorm2d folded in: the value equals the BatchNorm2d's output
        folded_conv: usize,
        /// no value from the rule, the hook output is there under another module's key
        aliased: Vec<String>,
        /// no value from the rule and the hook output is not in the graph
        absent: Vec<String>,
    }

    /// Checks the rule against PyTorch hooks + onnxruntime on one committed export:
    /// * every key the rule returns is a hooked module call, and its value is numerically equal
    ///   to that hook output, or (a Conv2d whose BatchNorm2d the exporter folded into it) to
    ///   the BatchNorm2d's hook output;
    /// * every hook output that exists in the graph is returned under its own key or, for
    ///   modules that left no node of their own (a BatchNorm2d folded into the Conv by the
    ///   TorchScript exporter, Dropout), under another module's key.
    fn check_export(file: &str) -> (Tally, usize) {
        let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let j = parse_json(&text);
        let g = j.get("graph");
        let initializers = g.get("initializers").strs();
        let known = modules_from_initializers(initializers.iter().map(|s| s.as_str()));
        let nodes: Vec<ScopedNode> = g
            .get("nodes")
            .arr()
            .iter()
            .map(|n| {
                let name = n.get("name").str().unwrap_or("");
                let scope = match n.get("name_scopes").str() {
                    Some(ns) => dynamo_scope(ns).map(|path| Scope { path, call: 0 }),
                    None => ts_scope_with(name, |p| known.contains(p)),
                };
                ScopedNode::new(scope, n.get("inputs").strs(), n.get("outputs").strs())
            })
            .collect();
        let got = module_output_map(&nodes, &g.get("outputs").strs());
        let mods = j.get("modules");
        let matches = |k: &str| -> Vec<String> { mods.get(k).get("matches").strs() };
        let mut t = Tally::default();
        for (k, v) in &got {
            let e = mods.get(k);
            assert!(
                !matches!(e, J::Null),
                "{file}: rule gives {k} = {v}, but no such hooked call"
            );
            let m = matches(k);
            if m.contains(v) {
                t.exact += 1;
                continue;
            }
            let folded = e.get("bn_folded_into").str();
            assert!(
                m.is_empty() && folded.is_some_and(|bn| matches(bn).contains(v)),
                "{file}: {k} -> {v}, hook output matches {m:?} (bn_folded_into {folded:?})"
            );
            t.folded_conv += 1;
        }
        let given: HashSet<&String> = got.values().collect();
        for (k, e) in mods.entries() {
            if got.contains_key(k) {
                continue;
            }
            let m = e.get("matches").strs();
            if m.is_empty() {
                t.absent
                    .push(format!("{k} ({})", e.get("cls").str().unwrap_or("?")));
                continue;
            }
            assert!(
                m.iter().any(|v| given.contains(v)),
                "{file}: hook output of {k} exists as {m:?} but no module maps to it"
            );
            t.aliased
                .push(format!("{k} ({})", e.get("cls").str().unwrap_or("?")));
        }
        let total = mods.entries().len();
        assert_eq!(
            t.exact + t.folded_conv + t.aliased.len() + t.absent.len(),
            total
        );
        (t, total)
    }

    #[test]
    fn real_exports_match_hooks() {
        for f in [
            "names_mini_resnet.ts.json",
            "names_mini_resnet.dynamo.json",
            "names_mobilenet_v3_small.ts.json",
            "names_mobilenet_v3_small.dynamo.json",
        ] {
            let (t, total) = check_export(f);
            eprintln!("{f}: {t:?}");
            // what is not exact is explained by BatchNorm folding, or by Dropout (no node or an
            // Identity outside its scope)
            assert!(
                t.aliased
                    .iter()
                    .all(|s| s.ends_with("(BatchNorm2d)") || s.ends_with("(Dropout)")),
                "{f}: {:?}",
                t.aliased
            );
            assert!(
                t.absent.iter().all(|s| s.ends_with("(Conv2d)")),
                "{f}: {:?}",
                t.absent
            );
            assert!(t.exact * 2 > total, "{f}: {t:?}");
        }
    }
}
