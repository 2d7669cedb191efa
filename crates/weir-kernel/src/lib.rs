//! weir as a Jupyter kernel (`weir kernel`): Jupyter's messaging protocol 5.3 over ZeroMQ
//! (`jupyter-protocol` for the messages, `jupyter-zmq-client` for their signed wire form),
//! started by Jupyter from a kernelspec (`weir kernelspec install`). One kernel is one
//! sandboxed session with the configured limits: every notebook tool (JupyterLab, VS Code,
//! nbclient, papermill) runs its cells in weir's sandbox. docs/jupyter.md.
//!
//! A front end beside the service's, over the sandbox library alone.

mod error;
mod guest;
mod history;
mod kernel;
mod spec;
mod wire;

pub use error::{Error, Result};
pub use jupyter_protocol::ConnectionInfo;
pub use kernel::{read_connection_file, run, runtime_info, runtimes, KernelConfig};
pub use spec::{display_name, install, name as spec_name, Place};
