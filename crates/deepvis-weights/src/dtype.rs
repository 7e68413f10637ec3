use std::fmt;

/// Element type of a tensor as stored in the weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element in the file.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }

    /// Decodes little-endian elements of this type, appending them as f32.
    /// Trailing bytes that do not form a whole element are ignored; callers
    /// check lengths beforehand.
    pub(crate) fn decode_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        macro_rules! decode {
            ($n:literal, $conv:expr) => {
                out.extend(bytes.chunks_exact($n).map(|c| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    $conv(a)
                }))
            };
        }
        match self {
            DType::F64 => decode!(8, |a| f64::from_le_bytes(a) as f32),
            DType::F32 => decode!(4, f32::from_le_bytes),
            DType::F16 => decode!(2, |a| half::f16::from_le_bytes(a).to_f32()),
            DType::BF16 => decode!(2, |a| half::bf16::from_le_bytes(a).to_f32()),
            DType::I64 => decode!(8, |a| i64::from_le_bytes(a) as f32),
            DType::I32 => decode!(4, |a| i32::from_le_bytes(a) as f32),
            DType::I16 => decode!(2, |a| i16::from_le_bytes(a) as f32),
            DType::I8 => out.extend(bytes.iter().map(|&b| b as i8 as f32)),
            DType::U8 => out.extend(bytes.iter().map(|&b| b as f32)),
            DType::Bool => out.extend(bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 })),
        }
    }

    /// Decodes element `index` of a little-endian buffer; `None` if out of range.
    pub(crate) fn decode_one(self, bytes: &[u8], index: usize) -> Option<f32> {
        let size = self.size_in_bytes();
        let start = index.checked_mul(size)?;
        let c = bytes.get(start..start.checked_add(size)?)?;
        Some(match self {
            DType::F64 => f64::from_le_bytes(c.try_into().ok()?) as f32,
            DType::F32 => f32::from_le_bytes(c.try_into().ok()?),
            DType::F16 => half::f16::from_le_bytes(c.try_into().ok()?).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes(c.try_into().ok()?).to_f32(),
            DType::I64 => i64::from_le_bytes(c.try_into().ok()?) as f32,
            DType::I32 => i32::from_le_bytes(c.try_into().ok()?) as f32,
            DType::I16 => i16::from_le_bytes(c.try_into().ok()?) as f32,
            DType::I8 => c[0] as i8 as f32,
            DType::U8 => c[0] as f32,
            DType::Bool => {
                if c[0] != 0 {
                    1.0
                } else {
                    0.0
                }
            }
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
