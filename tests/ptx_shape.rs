//! Checks on the embedded PTX that need no GPU.
use flashcomm::{KernelId, KERNELS};

/// The host's entry table and the PTX name the same kernels, both ways.
#[test]
fn kernel_names_are_in_the_ptx() {
    let table: Vec<&str> = KernelId::all().map(|(_, name)| name).collect();
    for name in &table {
        assert!(KERNELS.ptx.contains(&format!(".entry {name}(")), "kernel {name} missing from the PTX");
    }
    for line in KERNELS.ptx.lines().filter_map(|l| l.strip_prefix(".visible .entry ")) {
        let name = line.trim_end_matches('(');
        assert!(table.contains(&name), "the PTX has a kernel the host does not know: {name}");
    }
    // One two-step kernel per element type and wire pair: plain/plain and
    // every pair of quantized widths.
    let pairs = 1 + flashcomm::Bits::ALL.len().pow(2);
    assert_eq!(table.iter().filter(|n| n.starts_with("allreduce_twostep_")).count(), 2 * pairs);
}

#[test]
fn ptx_is_self_contained_and_uses_the_intended_instructions() {
    let ptx = KERNELS.ptx;
    assert!(!ptx.contains(".extern .func"), "a core routine was not inlined");
    assert!(!ptx.contains(".local"), "a kernel spills arrays to local memory");
    assert!(ptx.contains(".target sm_80"), "one fixed target, sm_80");
    // 16-byte accesses on the hot paths, L2-only loads for peer data.
    assert!(ptx.contains("ld.global.v4.u32") && ptx.contains("st.global.v4.u32") && ptx.contains("ld.global.cg.v4.u32"));
    // Flags: release/acquire at system scope.
    assert!(ptx.contains("st.release.sys.global.u32") && ptx.contains("ld.acquire.sys.global.u32"));
    // No contraction: the GPU must round like the host reference.
    assert!(!ptx.contains("fma.rn.f32") && !ptx.contains("mad.f32"), "FP contraction found");
    assert!(!ptx.contains("mul.f32 ") && !ptx.contains("add.f32 "), "mul/add without .rn may be fused by ptxas");
    assert!(!ptx.contains(".ftz"), "flush-to-zero would break subnormal bit-exactness");
    assert!(!ptx.contains("ld.global.nc"), "non-coherent loads are not allowed on peer-written memory");
}

#[test]
fn every_kernel_carries_the_launch_bounds() {
    let entries = KERNELS.ptx.matches(".visible .entry ").count();
    let bounds = format!(".maxntid {}, 1, 1", flashcomm::device::abi::THREADS);
    assert_eq!(KERNELS.ptx.matches(bounds.as_str()).count(), entries, "build.rs and abi::THREADS disagree");
}
