//! The raw system calls the daemon makes where no safe wrapper fits, in one place (as aya's
//! `sys/`): every `unsafe` block that talks to the kernel directly lives under here, with the
//! contract it relies on written beside it.
//!
//! - [`bpf`]: map element and batch commands of `bpf(2)` on `&self`.

pub mod bpf;
