//! An external sort of records by a 64-bit key, for writing a layer's rows in spatial order
//! without holding them all: records are gathered in memory up to a budget, each full batch is
//! sorted and written to a run file, and the runs are merged, reading each in order. Equal keys
//! keep the order the records came in.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

/// Records gathered and sorted by key.
#[derive(Debug)]
pub struct Runs {
    base: PathBuf,
    budget: usize,
    bytes: Vec<u8>,
    /// Key and offset of each record in `bytes` (each record there is length, then bytes).
    index: Vec<(u64, usize)>,
    files: Vec<PathBuf>,
}

impl Runs {
    /// Runs written as `<base>.run<N>`, each of about `budget` bytes.
    #[must_use]
    pub fn new(base: PathBuf, budget: usize) -> Self {
        Self {
            base,
            budget,
            bytes: Vec::new(),
            index: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Adds a record.
    ///
    /// # Errors
    /// When a full batch cannot be written out.
    pub fn push(&mut self, key: u64, record: &[u8]) -> std::io::Result<()> {
        self.index.push((key, self.bytes.len()));
        let length = u32::try_from(record.len())
            .map_err(|_| std::io::Error::other("a record over 4 GiB"))?;
        self.bytes.extend_from_slice(&length.to_le_bytes());
        self.bytes.extend_from_slice(record);
        if self.bytes.len() >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn record(&self, offset: usize) -> &[u8] {
        let mut length = [0u8; 4];
        length.copy_from_slice(&self.bytes[offset..offset + 4]);
        let length = u32::from_le_bytes(length) as usize;
        &self.bytes[offset + 4..offset + 4 + length]
    }

    fn spill(&mut self) -> std::io::Result<()> {
        let mut name = self.base.clone().into_os_string();
        name.push(format!(".run{}", self.files.len()));
        let path = PathBuf::from(name);
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(&path)?);
        self.files.push(path);
        self.index.sort_by_key(|(key, _)| *key);
        for &(key, offset) in &self.index {
            let record = self.record(offset);
            out.write_all(&key.to_le_bytes())?;
            out.write_all(&u32::try_from(record.len()).unwrap_or(0).to_le_bytes())?;
            out.write_all(record)?;
        }
        out.flush()?;
        self.bytes.clear();
        self.index.clear();
        Ok(())
    }

    /// Calls `each` with every record in key order.
    ///
    /// # Errors
    /// When a run cannot be written or read, or `each` fails.
    pub fn drain<E: From<std::io::Error>>(
        mut self,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.files.is_empty() {
            // One batch: sorted where it is.
            let mut index = std::mem::take(&mut self.index);
            index.sort_by_key(|(key, _)| *key);
            for (_, offset) in index {
                each(self.record(offset))?;
            }
            return Ok(());
        }
        if !self.index.is_empty() {
            self.spill()?;
        }
        let mut readers = Vec::with_capacity(self.files.len());
        for path in &self.files {
            readers.push(BufReader::with_capacity(64 * 1024, File::open(path)?));
        }
        let next = |reader: &mut BufReader<File>| -> std::io::Result<Option<(u64, Vec<u8>)>> {
            let mut head = [0u8; 12];
            match reader.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let mut key = [0u8; 8];
            key.copy_from_slice(&head[..8]);
            let mut length = [0u8; 4];
            length.copy_from_slice(&head[8..]);
            let mut record = vec![0u8; u32::from_le_bytes(length) as usize];
            reader.read_exact(&mut record)?;
            Ok(Some((u64::from_le_bytes(key), record)))
        };
        // The smallest key first; between equal keys, the earlier run.
        let mut heap = BinaryHeap::new();
        let mut pending: Vec<Option<Vec<u8>>> = vec![None; readers.len()];
        for (run, reader) in readers.iter_mut().enumerate() {
            if let Some((key, record)) = next(reader)? {
                pending[run] = Some(record);
                heap.push(Reverse((key, run)));
            }
        }
        while let Some(Reverse((_, run))) = heap.pop() {
            if let Some(record) = pending[run].take() {
                each(&record)?;
            }
            if let Some((key, record)) = next(&mut readers[run])? {
                pending[run] = Some(record);
                heap.push(Reverse((key, run)));
            }
        }
        Ok(())
    }
}

impl Drop for Runs {
    fn drop(&mut self) {
        for path in &self.files {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many runs merge into one order, stable between equal keys; the run files go.
    #[test]
    fn runs_merge_in_key_order_keeping_arrival_order_for_equal_keys() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for budget in [64, 1 << 20] {
            let mut runs = Runs::new(dir.path().join("t"), budget);
            let mut expected = Vec::new();
            for i in 0..1000u64 {
                let key = (i * 7919) % 97;
                let record = format!("{key:03}-{i:04}");
                runs.push(key, record.as_bytes())
                    .unwrap_or_else(|e| panic!("{e}"));
                expected.push(record);
            }
            expected.sort_by_key(|r| r[..3].to_owned()); // stable: arrival order within a key
            let mut got = Vec::new();
            runs.drain(|r| {
                got.push(String::from_utf8_lossy(r).into_owned());
                Ok::<(), std::io::Error>(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got, expected, "budget {budget}");
            assert_eq!(
                std::fs::read_dir(dir.path())
                    .map(|d| d.count())
                    .unwrap_or(1),
                0
            );
        }
    }
}
