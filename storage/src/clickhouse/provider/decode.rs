//! `RowBinary` responses as Arrow columns.
//!
//! `RowBinary` because 18.16 has no Arrow format and this is its most exact one: numbers
//! travel as their little-endian bytes (no float printing and parsing), strings as a
//! length and their bytes (no escaping), and it is what the `clickhouse` crate already
//! speaks for the store's other reads. A response arrives in chunks that may end inside a
//! row, so each row is first measured and only decoded once all of it is there.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, StringBuilder};
use datafusion::arrow::array::{
    Float64Builder, Int32Builder, ListBuilder, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field};

use super::tables::Wire;
use crate::{Result, StorageError};

/// The longest string accepted from ClickHouse; anything longer is a broken response.
const MAX_STRING_BYTES: u64 = 1 << 30;

fn malformed(what: &str) -> StorageError {
    StorageError::Decode(format!(
        "ClickHouse sent a malformed RowBinary response: {what}"
    ))
}

/// Decoded values of one column.
#[derive(Debug)]
pub(super) enum Values {
    Int32(Vec<i32>),
    UInt32(Vec<u32>),
    Int64(Vec<i64>),
    UInt64(Vec<u64>),
    Float64(Vec<f64>),
    String(StringBuilder),
    Int32List(ListBuilder<Int32Builder>),
    Float64List(ListBuilder<Float64Builder>),
}

impl Values {
    fn new(wire: Wire) -> Self {
        match wire {
            Wire::Int32 => Self::Int32(Vec::new()),
            Wire::UInt32 => Self::UInt32(Vec::new()),
            Wire::Int64 => Self::Int64(Vec::new()),
            Wire::UInt64 => Self::UInt64(Vec::new()),
            Wire::Float64 => Self::Float64(Vec::new()),
            Wire::String | Wire::NullableString | Wire::Labels => {
                Self::String(StringBuilder::new())
            }
            Wire::Int32List => Self::Int32List(
                ListBuilder::new(Int32Builder::new()).with_field(list_item(DataType::Int32)),
            ),
            Wire::Float64List => Self::Float64List(
                ListBuilder::new(Float64Builder::new()).with_field(list_item(DataType::Float64)),
            ),
        }
    }

    /// The column as an array of `field`'s type.
    pub fn into_array(self, field: &Field) -> Result<ArrayRef> {
        let array: ArrayRef = match self {
            Self::Int32(v) => Arc::new(Int32Array::from(v)),
            Self::UInt32(v) => Arc::new(UInt32Array::from(v)),
            Self::Int64(v) => Arc::new(Int64Array::from(v)),
            Self::UInt64(v) => Arc::new(UInt64Array::from(v)),
            Self::Float64(v) => Arc::new(Float64Array::from(v)),
            Self::String(mut builder) => Arc::new(builder.finish()),
            Self::Int32List(mut builder) => Arc::new(builder.finish()),
            Self::Float64List(mut builder) => Arc::new(builder.finish()),
        };
        if array.data_type() == field.data_type() {
            return Ok(array);
        }
        // Times: Int64 in ClickHouse, Arrow timestamps of the same unit (a reinterpretation).
        match (array.data_type(), field.data_type()) {
            (DataType::Int64, DataType::Timestamp(_, _)) => cast(&array, field.data_type())
                .map_err(|e| StorageError::Decode(format!("column {}: {e}", field.name()))),
            (from, to) => Err(StorageError::Decode(format!(
                "column {} arrives as {from}, not {to}",
                field.name()
            ))),
        }
    }
}

/// The element field of list columns: the embedded store's (non-null items).
fn list_item(item: DataType) -> Arc<Field> {
    Arc::new(crate::embedded::histogram_list_item(item))
}

/// Reads values off a byte slice; `None` when the slice ends first.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(n)?;
        let slice = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|s| s.try_into().ok())
    }

    /// An unsigned LEB128 number (string and array lengths).
    fn length(&mut self) -> Result<Option<u64>> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some([byte]) = self.array::<1>() else {
                return Ok(None);
            };
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return if value > MAX_STRING_BYTES {
                    Err(malformed("a length over 1 GiB"))
                } else {
                    Ok(Some(value))
                };
            }
        }
        Err(malformed("a length of more than ten bytes"))
    }

    fn string(&mut self) -> Result<Option<&'a str>> {
        let Some(length) = self.length()? else {
            return Ok(None);
        };
        let Some(bytes) = usize::try_from(length).ok().and_then(|n| self.take(n)) else {
            return Ok(None);
        };
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| malformed("a string that is not UTF-8"))
    }

    /// An array of fixed-size numbers, each decoded from its little-endian bytes.
    fn numbers<const N: usize, T>(&mut self, decode: fn([u8; N]) -> T) -> Result<Option<Vec<T>>> {
        let Some(count) = self.length()? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for _ in 0..count {
            let Some(bytes) = self.array::<N>() else {
                return Ok(None);
            };
            out.push(decode(bytes));
        }
        Ok(Some(out))
    }

    fn strings(&mut self) -> Result<Option<Vec<&'a str>>> {
        let Some(count) = self.length()? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for _ in 0..count {
            let Some(s) = self.string()? else {
                return Ok(None);
            };
            out.push(s);
        }
        Ok(Some(out))
    }
}

/// One value decoded, not yet stored: rows are stored only once complete.
enum Value<'a> {
    Int32(i32),
    UInt32(u32),
    Int64(i64),
    UInt64(u64),
    Float64(f64),
    String(Option<&'a str>),
    Labels(Vec<&'a str>, Vec<&'a str>),
    Int32List(Vec<i32>),
    Float64List(Vec<f64>),
}

fn read<'a>(reader: &mut Reader<'a>, wire: Wire) -> Result<Option<Value<'a>>> {
    Ok(match wire {
        Wire::Int32 => reader.array().map(|b| Value::Int32(i32::from_le_bytes(b))),
        Wire::UInt32 => reader.array().map(|b| Value::UInt32(u32::from_le_bytes(b))),
        Wire::Int64 => reader.array().map(|b| Value::Int64(i64::from_le_bytes(b))),
        Wire::UInt64 => reader.array().map(|b| Value::UInt64(u64::from_le_bytes(b))),
        Wire::Float64 => reader
            .array()
            .map(|b| Value::Float64(f64::from_le_bytes(b))),
        Wire::String => reader.string()?.map(|s| Value::String(Some(s))),
        Wire::NullableString => match reader.array::<1>() {
            None => None,
            Some([1]) => Some(Value::String(None)),
            Some([0]) => reader.string()?.map(|s| Value::String(Some(s))),
            Some([flag]) => return Err(malformed(&format!("a NULL flag of {flag}"))),
        },
        Wire::Labels => {
            let Some(names) = reader.strings()? else {
                return Ok(None);
            };
            reader.strings()?.map(|values| Value::Labels(names, values))
        }
        Wire::Int32List => reader.numbers(i32::from_le_bytes)?.map(Value::Int32List),
        Wire::Float64List => reader.numbers(f64::from_le_bytes)?.map(Value::Float64List),
    })
}

/// Decodes rows of a fixed list of columns.
#[derive(Debug)]
pub(super) struct Decoder {
    wires: Vec<Wire>,
    columns: Vec<Values>,
    rows: usize,
}

impl Decoder {
    pub fn new(wires: Vec<Wire>) -> Self {
        let columns = wires.iter().map(|w| Values::new(*w)).collect();
        Self {
            wires,
            columns,
            rows: 0,
        }
    }

    /// Rows decoded and not yet taken.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Decodes up to `max_rows` complete rows from the start of `bytes`; returns the bytes
    /// they took (the rest is an incomplete row, or rows beyond `max_rows`).
    pub fn decode(&mut self, bytes: &[u8], max_rows: usize) -> Result<usize> {
        let mut reader = Reader { bytes, position: 0 };
        let mut row = Vec::with_capacity(self.wires.len());
        let mut decoded = 0;
        while decoded < max_rows && reader.position < bytes.len() {
            let start = reader.position;
            row.clear();
            for wire in &self.wires {
                match read(&mut reader, *wire)? {
                    Some(value) => row.push(value),
                    None => return Ok(start),
                }
            }
            for (column, value) in self.columns.iter_mut().zip(row.drain(..)) {
                store(column, value)?;
            }
            self.rows += 1;
            decoded += 1;
        }
        Ok(reader.position)
    }

    /// The decoded columns, leaving the decoder empty.
    pub fn take(&mut self) -> Vec<Values> {
        self.rows = 0;
        let fresh = self.wires.iter().map(|w| Values::new(*w)).collect();
        std::mem::replace(&mut self.columns, fresh)
    }
}

fn store(column: &mut Values, value: Value<'_>) -> Result<()> {
    match (column, value) {
        (Values::Int32(c), Value::Int32(v)) => c.push(v),
        (Values::UInt32(c), Value::UInt32(v)) => c.push(v),
        (Values::Int64(c), Value::Int64(v)) => c.push(v),
        (Values::UInt64(c), Value::UInt64(v)) => c.push(v),
        (Values::Float64(c), Value::Float64(v)) => c.push(v),
        (Values::String(c), Value::String(v)) => c.append_option(v),
        (Values::String(c), Value::Labels(names, values)) => {
            if names.len() != values.len() {
                return Err(malformed("a series with more label names than values"));
            }
            // The same text as the embedded store's `labels`: a JSON object in name order.
            let object: serde_json::Map<String, serde_json::Value> = names
                .into_iter()
                .zip(values)
                .map(|(n, v)| (n.to_owned(), serde_json::Value::String(v.to_owned())))
                .collect();
            c.append_value(serde_json::Value::Object(object).to_string());
        }
        (Values::Int32List(c), Value::Int32List(v)) => c.append_value(v.into_iter().map(Some)),
        (Values::Float64List(c), Value::Float64List(v)) => {
            c.append_value(v.into_iter().map(Some));
        }
        _ => return Err(malformed("a value of another type than its column")),
    }
    Ok(())
}
