use std::collections::BTreeMap;

use crate::DType;

/// One tensor from a weights file, converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    /// Element type in the file (the values themselves are always f32 here).
    pub dtype: DType,
    /// Row-major contiguous values; `shape.iter().product()` of them
    /// (one for a 0-d tensor).
    pub data: Vec<f32>,
}

impl StoredTensor {
    pub fn new(shape: Vec<usize>, dtype: DType, data: Vec<f32>) -> Self {
        StoredTensor { shape, dtype, data }
    }

    /// Number of elements implied by `shape`.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Tensors by parameter name (e.g. `features.0.weight`), sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    tensors: BTreeMap<String, StoredTensor>,
}

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&StoredTensor> {
        self.tensors.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut StoredTensor> {
        self.tensors.get_mut(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &StoredTensor)> + '_ {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Inserts a tensor, returning the one previously stored under `key`.
    pub fn insert(&mut self, key: impl Into<String>, tensor: StoredTensor) -> Option<StoredTensor> {
        self.tensors.insert(key.into(), tensor)
    }

    pub fn remove(&mut self, key: &str) -> Option<StoredTensor> {
        self.tensors.remove(key)
    }

    /// Removes `prefix` from every key that starts with it (e.g. `module.`
    /// added by `DataParallel`); other keys are left alone. Returns how many
    /// keys were renamed. If a renamed key collides with an existing one, the
    /// renamed tensor wins.
    pub fn strip_prefix(&mut self, prefix: &str) -> usize {
        if prefix.is_empty() {
            return 0;
        }
        let renamed: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for key in &renamed {
            if let Some(t) = self.tensors.remove(key) {
                self.tensors.insert(key[prefix.len()..].to_string(), t);
            }
        }
        renamed.len()
    }

    /// Consumes the dict, giving the underlying sorted map.
    pub fn into_inner(self) -> BTreeMap<String, StoredTensor> {
        self.tensors
    }
}

impl FromIterator<(String, StoredTensor)> for StateDict {
    fn from_iter<I: IntoIterator<Item = (String, StoredTensor)>>(iter: I) -> Self {
        StateDict {
            tensors: iter.into_iter().collect(),
        }
    }
}

impl IntoIterator for StateDict {
    type Item = (String, StoredTensor);
    type IntoIter = std::collections::btree_map::IntoIter<String, StoredTensor>;

    fn into_iter(self) -> Self::IntoIter {
        self.tensors.into_iter()
    }
}

impl<'a> IntoIterator for &'a StateDict {
    type Item = (&'a String, &'a StoredTensor);
    type IntoIter = std::collections::btree_map::Iter<'a, String, StoredTensor>;

    fn into_iter(self) -> Self::IntoIter {
        self.tensors.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: f32) -> StoredTensor {
        StoredTensor::new(vec![1], DType::F32, vec![v])
    }

    #[test]
    fn strip_prefix_renames_only_matching_keys() {
        let mut d = StateDict::new();
        d.insert("module.conv.weight", t(1.0));
        d.insert("module.conv.bias", t(2.0));
        d.insert("fc.weight", t(3.0));
        assert_eq!(d.strip_prefix("module."), 2);
        let keys: Vec<&str> = d.keys().collect();
        assert_eq!(keys, ["conv.bias", "conv.weight", "fc.weight"]);
        assert_eq!(d.get("conv.weight").map(|t| t.data[0]), Some(1.0));
        assert_eq!(d.strip_prefix(""), 0);
    }
}
