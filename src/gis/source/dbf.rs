//! Reading a shapefile's `.dbf` attribute table (dBase III): field types from the header as
//! GDAL has them (numbers without decimals are integers), text decoded by the `.cpg` code page,
//! and numbers kept at full precision (the `dbase` crate reads `F` fields as 32-bit floats).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use rusqlite::types::Value;

use crate::gis::source::gpkg_write::{Field, FieldType};

/// One column of the table.
#[derive(Debug, Clone)]
struct Column {
    kind: u8,
    length: usize,
    decimals: u8,
}

/// A `.dbf` being read record by record.
pub struct Table {
    reader: BufReader<File>,
    columns: Vec<Column>,
    /// The fields, in table order.
    pub fields: Vec<Field>,
    record_length: usize,
    remaining: u32,
    encoding: &'static encoding_rs::Encoding,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("fields", &self.fields)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

/// Why a `.dbf` cannot be read: missing, a malformed header, or a file that ends early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DbfError(pub String);

impl Table {
    /// Opens the `.dbf` beside `shp`, in `encoding` if given, else the `.cpg` code page if there
    /// is one, else Windows-1252 (ISO-8859-1 as GDAL assumes, plus the characters Windows adds).
    ///
    /// # Errors
    /// When the file is missing or its header is malformed.
    pub fn open(
        shp: &Path,
        encoding: Option<&'static encoding_rs::Encoding>,
    ) -> Result<Self, DbfError> {
        Self::read_header(shp, encoding).map_err(DbfError)
    }

    fn read_header(
        shp: &Path,
        encoding: Option<&'static encoding_rs::Encoding>,
    ) -> Result<Self, String> {
        let dbf = shp.with_extension("dbf");
        let mut reader = BufReader::new(File::open(&dbf).map_err(|e| format!(".dbf: {e}"))?);
        let mut header = [0u8; 32];
        reader
            .read_exact(&mut header)
            .map_err(|e| format!(".dbf header: {e}"))?;
        let remaining = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let header_length = usize::from(u16::from_le_bytes([header[8], header[9]]));
        let record_length = usize::from(u16::from_le_bytes([header[10], header[11]]));
        let mut descriptors = vec![0u8; header_length.saturating_sub(32)];
        reader
            .read_exact(&mut descriptors)
            .map_err(|e| format!(".dbf field descriptors: {e}"))?;
        let cpg = std::fs::read_to_string(shp.with_extension("cpg"))
            .ok()
            .and_then(|label| {
                let label = label.trim().trim_start_matches('\u{feff}');
                let label = if label.chars().all(|c| c.is_ascii_digit()) {
                    format!("windows-{label}")
                } else {
                    label.to_owned()
                };
                encoding_rs::Encoding::for_label(label.as_bytes())
            })
            .unwrap_or(encoding_rs::WINDOWS_1252);
        let encoding = encoding.unwrap_or(cpg);
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        for descriptor in descriptors.chunks_exact(32).take_while(|d| d[0] != 0x0d) {
            let end = descriptor[..11].iter().position(|b| *b == 0).unwrap_or(11);
            let (name, _, _) = encoding.decode(&descriptor[..end]);
            let column = Column {
                kind: descriptor[11].to_ascii_uppercase(),
                length: usize::from(descriptor[16]),
                decimals: descriptor[17],
            };
            let kind = match column.kind {
                b'N' | b'F' if column.decimals == 0 && column.length <= 18 => FieldType::Integer,
                b'N' | b'F' | b'O' => FieldType::Real,
                b'I' | b'L' => FieldType::Integer,
                _ => FieldType::Text,
            };
            fields.push(Field {
                name: name.trim().to_owned(),
                kind,
            });
            columns.push(column);
        }
        Ok(Self {
            reader,
            columns,
            fields,
            record_length,
            remaining,
            encoding,
        })
    }

    /// The next record's values in field order, or `None` at the end. Deleted records come
    /// back as `Some(None)`.
    ///
    /// # Errors
    /// When the file ends early.
    pub fn next_record(&mut self) -> Result<Option<Option<Vec<Value>>>, DbfError> {
        self.read_record().map_err(DbfError)
    }

    fn read_record(&mut self) -> Result<Option<Option<Vec<Value>>>, String> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        let mut record = vec![0u8; self.record_length.max(1)];
        self.reader
            .read_exact(&mut record)
            .map_err(|e| format!(".dbf record: {e}"))?;
        if record[0] == b'*' {
            return Ok(Some(None));
        }
        let mut at = 1;
        let mut values = Vec::with_capacity(self.columns.len());
        for column in &self.columns {
            let raw = record.get(at..at + column.length).unwrap_or_default();
            at += column.length;
            values.push(self.value(column, raw));
        }
        Ok(Some(Some(values)))
    }

    fn value(&self, column: &Column, raw: &[u8]) -> Value {
        let (text, _, _) = self.encoding.decode(raw);
        let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
        match column.kind {
            b'N' | b'F' | b'O' if text.is_empty() || text.starts_with('*') => Value::Null,
            b'N' | b'F' if column.decimals == 0 && column.length <= 18 => {
                text.parse::<i64>().map_or_else(
                    |_| text.parse::<f64>().map_or(Value::Null, Value::Real),
                    Value::Integer,
                )
            }
            b'N' | b'F' => text.parse::<f64>().map_or(Value::Null, Value::Real),
            b'I' if raw.len() == 4 => Value::Integer(i64::from(i32::from_le_bytes([
                raw[0], raw[1], raw[2], raw[3],
            ]))),
            b'O' if raw.len() == 8 => {
                Value::Real(f64::from_le_bytes(raw.try_into().unwrap_or([0; 8])))
            }
            b'L' => match text.chars().next() {
                Some('T' | 't' | 'Y' | 'y') => Value::Integer(1),
                Some('F' | 'f' | 'N' | 'n') => Value::Integer(0),
                _ => Value::Null,
            },
            b'D' if text.len() == 8 && text.bytes().all(|b| b.is_ascii_digit()) => {
                Value::Text(format!("{}-{}-{}", &text[..4], &text[4..6], &text[6..]))
            }
            _ if text.is_empty() => Value::Null,
            _ => Value::Text(text.to_owned()),
        }
    }
}
