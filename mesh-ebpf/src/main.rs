//! Weft's eBPF programs, one file per hook. Built for `bpfel-unknown-none` by
//! `cargo xtask build-ebpf`; the agent embeds the object.
//!
//! Every entry point is a thin wrapper over a `try_` function that returns `Result`; errors are
//! turned into the hook's fail-closed verdict, never a panic.
#![no_std]
#![no_main]

mod connect;
mod getpeername;
mod maps;
mod sk_lookup;
mod sk_msg;
mod sock_ops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
