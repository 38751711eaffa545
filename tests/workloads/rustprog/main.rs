// A Rust program whose own allocations are known exactly (see rustprog.expected.json):
// Vec::with_capacity and one growth, Box::new of a struct, String building.  Built with
// plain `rustc`, twice: legacy and v0 symbol mangling.  Prints nothing (stdout's buffer
// would be one more allocation) and keeps to what rustc 1.63 (Debian 12) accepts.
//
// SPDX-License-Identifier: MIT OR Apache-2.0

use std::arch::asm;

// Hands the address to an empty asm statement that may read any memory, so the optimiser
// cannot prove the allocation unused and delete it (LLVM does remove unused Box::new).
#[inline(always)]
fn keep<T: ?Sized>(value: &T) {
    let address = value as *const T as *const u8;
    unsafe { asm!("/* {0} */", in(reg) address, options(nostack, preserves_flags)) }
}

pub struct Point {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

// with_capacity(16) of u64: 128 bytes.  The 17th push doubles the capacity to 32, which
// reallocs to 256 bytes.  2 allocations, 384 bytes, both blocks released.
#[inline(never)]
fn make_vec() -> u64 {
    let mut v: Vec<u64> = Vec::with_capacity(16);
    for i in 0..17u64 {
        v.push(i * i);
    }
    keep(&v[..]);
    v.iter().sum()
}

// Three 24-byte boxes; the last one is leaked.  3 allocations, 72 bytes.
#[inline(never)]
fn make_boxes() -> f64 {
    let a = Box::new(Point { x: 1.0, y: 2.0, z: 3.0 });
    let b = Box::new(Point { x: 4.0, y: 5.0, z: 6.0 });
    keep(&*a);
    keep(&*b);
    let sum = a.x + b.y;
    let c: &'static mut Point = Box::leak(Box::new(Point { x: sum, y: 0.0, z: 0.0 }));
    keep(&*c);
    c.x + a.z + b.z
}

// with_capacity(32) bytes, filled to 32, then 8 more: the capacity doubles to 64 (a
// realloc).  The string is leaked.  2 allocations, 96 bytes.
#[inline(never)]
fn build_string() -> usize {
    let mut s = String::with_capacity(32);
    for _ in 0..4 {
        s.push_str("allocpr!");
    }
    s.push_str("ofiler!!");
    keep(s.as_str());
    let len = s.len();
    std::mem::forget(s);
    len
}

fn main() {
    let total = make_vec() as usize + make_boxes() as usize + build_string();
    // 1496 + 15 + 40 = 1551; a different result means the program did not run as expected.
    if total != 1551 {
        std::process::exit(1);
    }
}
