//! Shared integration-test support: a per-test harness, tree builders, the tree
//! comparator and process helpers.
//!
//! Not every test module uses every helper.
#![allow(dead_code)]

pub mod etcd;
pub mod fixture;
pub mod fs;
pub mod harness;
pub mod mutations;
pub mod process;
pub mod session;
pub mod sshd;
pub mod tree;

mod selftest;

pub use harness::{Stats, TestDir};

/// Defines a `#[test]` that gets its own fresh [`TestDir`], in the spirit of ripgrep's
/// `rgtest!`: `georep_test!(name, |t: TestDir| { ... });`.
macro_rules! georep_test {
    ($name:ident, $fun:expr) => {
        #[test]
        fn $name() {
            let t = $crate::support::TestDir::new(stringify!($name));
            ($fun)(t);
        }
    };
}
pub(crate) use georep_test;
