//! What the kernel fails with.

/// A kernel's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox refused or failed the session.
    #[error("{0}")]
    Sandbox(weir_sandbox::Error),
    /// The session ended (its program exited, or passed a limit); why.
    #[error("the session ended: {0}")]
    Ended(String),
    /// The session's kernel helper did not answer as asked.
    #[error("the kernel helper failed: {0}")]
    Helper(String),
    /// A Jupyter socket failed.
    #[error("{0}")]
    Protocol(#[from] jupyter_zmq_client::RuntimeError),
    /// The connection file or a kernelspec could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// A kernel result.
pub type Result<T> = std::result::Result<T, Error>;
