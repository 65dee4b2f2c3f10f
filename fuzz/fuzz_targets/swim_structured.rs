//! The receive path of a plaintext node fed well-formed packets built from
//! the input field by field (`cohort_fuzz::structured`): where the other
//! targets find decoder bugs, this one walks the SWIM state machine with
//! arbitrary ids, generations, versions, sequence numbers and statuses.
//! Same checks as `swim_plaintext`; nothing may panic.
#![no_main]

use cohort_fuzz::structured::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| {
    run(&input);
});
