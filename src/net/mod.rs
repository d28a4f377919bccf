//! Socket primitives, below the HTTP and proxy layers: timed reads and writes (`io`, bounded by
//! `deadline`'s coarse per-thread wheel rather than a timer each), zero-copy
//! forwarding (`splice`), the client-facing listeners (`listener`), the open-files budget
//! (`fd_budget`), the client and upstream byte streams (`stream`), TLS on them (`tls`) and the
//! PROXY protocol header in and out (`proxy_protocol`). Nothing here knows HTTP. `bench_ab` is
//! only in the build of `bench/inproc_ab.sh` (`--features bench-ab`).

#[cfg(feature = "bench-ab")]
pub mod bench_ab;
pub mod deadline;
pub mod fd_budget;
pub mod io;
pub mod listener;
pub mod posted_read;
pub mod proxy_protocol;
pub mod splice;
pub mod stream;
pub mod tls;

/// Which I/O driver monoio's `FusionDriver` picks on this machine.
pub fn driver_name() -> &'static str {
    if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    }
}
