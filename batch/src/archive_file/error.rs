//! What can go wrong writing or reading an archive file. Apart from the
//! format itself, so that [`crate::promote`] can name it without depending
//! on the writer.

/// Errors writing or reading an archive file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("archive file `{path}` is malformed: {problem}")]
    Malformed { path: String, problem: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}
