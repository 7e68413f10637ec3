//! A walk over the protobuf wire format, before prost decodes anything, that bounds what
//! decoding will allocate.
//!
//! prost never allocates more than the buffer holds for one field, but the decoded structs
//! are much larger than their encoding: an empty `NodeProto` is 2 bytes on the wire and about
//! two hundred bytes as a struct, so a hostile 1 GB file could ask for a hundred gigabytes.
//! This scan counts nodes and estimates the decoded size from the encoding alone, with no
//! allocation, so such files are refused with an error instead of aborting on OOM.

use crate::proto;

/// The message types of `proto.rs`; the nesting has no cycles, so recursion depth is bounded
/// by the schema (seven levels), whatever the file says.
#[derive(Debug, Clone, Copy)]
enum Msg {
    Model,
    OpsetId,
    StrStr,
    Graph,
    Node,
    Attribute,
    Tensor,
    ValueInfo,
    TypeProto,
    TypeTensor,
    Shape,
    Dim,
}

/// What decoding one occurrence of a field costs.
#[derive(Debug, Clone, Copy)]
enum Field {
    Message(Msg),
    /// A `String` or `Vec<u8>`: copied out of the buffer.
    Heap,
    /// A `Bytes` slice of the buffer: no copy.
    Shared,
    /// A repeated scalar of this many bytes in memory, packed or not.
    Scalar(usize),
    /// A singular scalar (already counted in its struct) or a field this crate skips.
    Free,
}

fn field(msg: Msg, number: u64) -> Field {
    use Field::*;
    match (msg, number) {
        (Msg::Model, 8) => Message(Msg::OpsetId),
        (Msg::Model, 2..=4) => Heap,
        (Msg::Model, 7) => Message(Msg::Graph),
        (Msg::Model, 14) => Message(Msg::StrStr),
        (Msg::Model, 25) => Shared,
        (Msg::OpsetId, 1) => Heap,
        (Msg::StrStr, 1 | 2) => Heap,
        (Msg::Graph, 1) => Message(Msg::Node),
        (Msg::Graph, 2) => Heap,
        (Msg::Graph, 5) => Message(Msg::Tensor),
        (Msg::Graph, 15) => Shared,
        (Msg::Graph, 11..=13) => Message(Msg::ValueInfo),
        (Msg::Node, 1 | 2 | 3 | 4 | 7) => Heap,
        (Msg::Node, 5) => Message(Msg::Attribute),
        (Msg::Node, 9) => Message(Msg::StrStr),
        (Msg::Attribute, 1 | 21 | 4 | 9) => Heap,
        (Msg::Attribute, 5 | 10) => Message(Msg::Tensor),
        (Msg::Attribute, 6 | 22 | 14 | 11 | 23 | 15) => Shared,
        (Msg::Attribute, 7) => Scalar(4),
        (Msg::Attribute, 8) => Scalar(8),
        (Msg::Tensor, 1 | 7 | 10 | 11) => Scalar(8),
        (Msg::Tensor, 4 | 5) => Scalar(4),
        (Msg::Tensor, 3 | 9) => Shared,
        (Msg::Tensor, 6 | 8) => Heap,
        (Msg::Tensor, 13) => Message(Msg::StrStr),
        (Msg::ValueInfo, 1) => Heap,
        (Msg::ValueInfo, 2) => Message(Msg::TypeProto),
        (Msg::TypeProto, 1) => Message(Msg::TypeTensor),
        (Msg::TypeTensor, 2) => Message(Msg::Shape),
        (Msg::Shape, 1) => Message(Msg::Dim),
        (Msg::Dim, 2) => Heap,
        _ => Free,
    }
}

fn struct_size(msg: Msg) -> usize {
    use std::mem::size_of;
    match msg {
        Msg::Model => size_of::<proto::ModelProto>(),
        Msg::OpsetId => size_of::<proto::OperatorSetIdProto>(),
        Msg::StrStr => size_of::<proto::StringStringEntryProto>(),
        Msg::Graph => size_of::<proto::GraphProto>(),
        Msg::Node => size_of::<proto::NodeProto>(),
        Msg::Attribute => size_of::<proto::AttributeProto>(),
        Msg::Tensor => size_of::<proto::TensorProto>(),
        Msg::ValueInfo => size_of::<proto::ValueInfoProto>(),
        Msg::TypeProto => size_of::<proto::TypeProto>(),
        Msg::TypeTensor => size_of::<proto::TypeProtoTensor>(),
        Msg::Shape => size_of::<proto::TensorShapeProto>(),
        Msg::Dim => size_of::<proto::Dimension>(),
    }
}

/// What the scan found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Nodes of the main graph.
    pub nodes: u64,
    /// Estimated bytes the decoded structs will take, counting the doubling growth of `Vec`s.
    pub decoded_bytes: u64,
}

/// Walks `buf` as a `ModelProto`. The error is a short reason for "not an ONNX model".
pub(crate) fn scan_model(buf: &[u8]) -> Result<Scan, String> {
    if buf.is_empty() {
        return Err("the file is empty".into());
    }
    let mut scan = Scan::default();
    let mut bytes = struct_size(Msg::Model) as u64;
    walk(buf, 0, Msg::Model, &mut scan, &mut bytes)?;
    // A Vec holds up to twice what it was pushed while growing.
    scan.decoded_bytes = bytes.saturating_mul(2);
    Ok(scan)
}

/// `base` is where `buf` starts in the file, so that messages give file offsets.
fn walk(buf: &[u8], base: usize, msg: Msg, scan: &mut Scan, bytes: &mut u64) -> Result<(), String> {
    let mut r = Reader { buf, pos: 0, base };
    while !r.done() {
        let at = base + r.pos;
        let key = r.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(format!("field number 0 at byte {at}"));
        }
        let add = |b: &mut u64, n: u64| *b = b.saturating_add(n);
        match key & 7 {
            0 => {
                r.varint()?;
                if let Field::Scalar(size) = field(msg, number) {
                    add(bytes, size as u64);
                }
            }
            1 | 5 => {
                r.skip(if key & 7 == 1 { 8 } else { 4 })?;
                if let Field::Scalar(size) = field(msg, number) {
                    add(bytes, size as u64);
                }
            }
            2 => {
                let len = r.varint()?;
                let body_at = base + r.pos;
                let body = r.take(len).map_err(|_| {
                    format!(
                        "field {number} at byte {at} declares {len} bytes but the file ends first"
                    )
                })?;
                match field(msg, number) {
                    Field::Message(inner) => {
                        if matches!(inner, Msg::Node) {
                            scan.nodes += 1;
                        }
                        add(bytes, struct_size(inner) as u64);
                        walk(body, body_at, inner, scan, bytes)?;
                    }
                    Field::Heap => add(bytes, 24 + body.len() as u64),
                    Field::Shared => add(bytes, 32),
                    Field::Scalar(size) => {
                        // Packed: fixed-width elements are known from the length; a varint
                        // element ends at each byte with the top bit clear.
                        let count = if is_fixed(msg, number) {
                            (body.len() / size) as u64
                        } else {
                            body.iter().filter(|b| *b & 0x80 == 0).count() as u64
                        };
                        add(bytes, count.saturating_mul(size as u64));
                    }
                    Field::Free => {}
                }
            }
            3 => skip_group(&mut r, number)?,
            wire => {
                return Err(format!(
                    "invalid wire type {wire} for field {number} at byte {at}"
                ))
            }
        }
    }
    Ok(())
}

/// Packed fields whose elements are fixed-width on the wire (float, double), as opposed to
/// varints.
fn is_fixed(msg: Msg, number: u64) -> bool {
    matches!((msg, number), (Msg::Attribute, 7) | (Msg::Tensor, 4 | 10))
}

/// Skips a (deprecated, never used by ONNX) group up to its matching end, without recursion.
fn skip_group(r: &mut Reader, number: u64) -> Result<(), String> {
    let mut open = vec![number];
    while let Some(&top) = open.last() {
        if r.done() {
            return Err(format!("group {top} is not closed before the end"));
        }
        let key = r.varint()?;
        match key & 7 {
            0 => {
                r.varint()?;
            }
            1 => r.skip(8)?,
            5 => r.skip(4)?,
            2 => {
                let len = r.varint()?;
                r.take(len)?;
            }
            3 => {
                if open.len() >= 100 {
                    return Err("groups nested more than 100 deep".into());
                }
                open.push(key >> 3);
            }
            4 if key >> 3 == top => {
                open.pop();
            }
            _ => return Err(format!("invalid wire type in group {top}")),
        }
    }
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// File offset of `buf`, for messages.
    base: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!(
                    "a varint at byte {} runs past the end",
                    self.base + self.pos
                ));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!(
            "a varint at byte {} is longer than 10 bytes",
            self.pos
        ))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], String> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "{len} bytes at byte {} run past the end",
                    self.base + self.pos
                )
            })?;
        let body = &self.buf[self.pos..end];
        self.pos = end;
        Ok(body)
    }

    fn skip(&mut self, len: u64) -> Result<(), String> {
        self.take(len).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn counts_nodes_and_bounds_the_decoded_size() {
        let model = proto::ModelProto {
            graph: Some(proto::GraphProto {
                node: vec![proto::NodeProto::default(); 1000],
                ..Default::default()
            }),
            ..Default::default()
        };
        let buf = model.encode_to_vec();
        let scan = scan_model(&buf).unwrap();
        assert_eq!(scan.nodes, 1000);
        let node = std::mem::size_of::<proto::NodeProto>() as u64;
        assert!(scan.decoded_bytes >= 1000 * node, "{scan:?}");
        assert!(buf.len() as u64 * 20 < scan.decoded_bytes, "{scan:?}");
    }

    #[test]
    fn packed_varints_are_counted_per_element() {
        let t = proto::TensorProto {
            int64_data: vec![0; 500],
            ..Default::default()
        };
        let model = proto::ModelProto {
            graph: Some(proto::GraphProto {
                initializer: vec![t],
                ..Default::default()
            }),
            ..Default::default()
        };
        let scan = scan_model(&model.encode_to_vec()).unwrap();
        assert!(scan.decoded_bytes >= 500 * 8 * 2, "{scan:?}");
    }

    #[test]
    fn truncation_is_reported_with_the_field() {
        let model = proto::ModelProto {
            producer_name: "x".repeat(100),
            ..Default::default()
        };
        let buf = model.encode_to_vec();
        let err = scan_model(&buf[..50]).unwrap_err();
        assert!(err.contains("field 2"), "{err}");
    }
}
