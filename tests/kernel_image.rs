//! Checks on the embedded kernel image that need no GPU. (That the image
//! is the build of today's `kernels-gpu` is checked by
//! `scripts/build-kernels.sh --check` in CI.)
use flashcomm::{KernelId, KERNELS};

/// The host's entry table and the PTX name the same kernels, both ways.
#[test]
fn kernel_names_are_in_the_ptx() {
    let table: Vec<&str> = KernelId::all().map(|(_, name)| name).collect();
    for name in &table {
        assert!(KERNELS.ptx().contains(&format!(".entry {name}(")), "kernel {name} missing from the PTX");
    }
    for line in KERNELS.ptx().lines().filter_map(|l| l.strip_prefix(".visible .entry ")) {
        let name = line.trim_end_matches('(');
        assert!(table.contains(&name), "the PTX has a kernel the host does not know: {name}");
    }
    // One two-step kernel per element type and wire pair: plain/plain and
    // every pair of quantized widths; one spiky kernel per quantized pair.
    let widths = flashcomm::Bits::ALL.len();
    assert_eq!(table.iter().filter(|n| n.starts_with("allreduce_twostep_")).count(), 2 * (1 + widths.pow(2)));
    assert_eq!(table.iter().filter(|n| n.starts_with("spiky_allreduce_twostep_")).count(), 2 * widths.pow(2));
}

#[test]
fn ptx_is_self_contained_and_uses_the_intended_instructions() {
    let ptx = KERNELS.ptx();
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
    // Non-coherent loads only of the module's own constant tables (LLVM's
    // switch tables, should a run-time match become one), never of
    // peer-written memory: each `ld.global.nc` must address a register
    // derived from a `switch_$_table` symbol in the same function.
    let mut from_table = std::collections::HashSet::new();
    for line in ptx.lines().map(str::trim) {
        if line.starts_with(".visible .entry") {
            from_table.clear();
        }
        let words: Vec<&str> = line.split(|c: char| c.is_whitespace() || c == ',' || c == ';').filter(|w| !w.is_empty()).collect();
        match words.as_slice() {
            ["mov.b64" | "mov.u64", dst, src, ..] if src.starts_with("switch_$_table") => {
                from_table.insert(dst.to_string());
            }
            ["add.s64", dst, a, ..] if from_table.contains(*a) => {
                from_table.insert(dst.to_string());
            }
            [op, _, addr, ..] if op.starts_with("ld.global.nc") => {
                let reg = addr.trim_start_matches('[').trim_end_matches(']');
                assert!(from_table.contains(reg), "non-coherent load not of a constant table: {line}");
            }
            _ => {}
        }
    }
}

#[test]
fn every_kernel_carries_the_launch_bounds() {
    let entries = KERNELS.ptx().matches(".visible .entry ").count();
    let bounds = format!(".maxntid {}, 1, 1", flashcomm::device::abi::THREADS);
    assert_eq!(KERNELS.ptx().matches(bounds.as_str()).count(), entries, "scripts/build-kernels.sh and abi::THREADS disagree");
}

/// Every SASS image is a CUDA ELF for the architecture it claims (the
/// driver would reject it at load time on a GPU) and holds every kernel.
#[test]
fn sass_matches_its_architecture_and_holds_every_kernel() {
    assert!(!KERNELS.sass().is_empty());
    for sass in KERNELS.sass() {
        let elf = sass.cubin();
        let (major, minor) = sass.arch();
        assert_eq!(elf.as_ptr() as usize % 8, 0, "sm_{major}{minor}: the cubin is not 8-byte aligned");
        assert_eq!(&elf[..5], b"\x7fELF\x02", "sm_{major}{minor}: not a 64-bit ELF");
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 190, "sm_{major}{minor}: e_machine is not EM_CUDA");
        let flags = u32::from_le_bytes([elf[48], elf[49], elf[50], elf[51]]);
        assert_eq!(flags & 0xff, major * 10 + minor, "sm_{major}{minor}: e_flags {flags:#x} name another architecture");
        for (_, name) in KernelId::all() {
            let needle = format!("{name}\0");
            assert!(elf.windows(needle.len()).any(|w| w == needle.as_bytes()), "sm_{major}{minor}: kernel {name} missing");
        }
    }
    // H100/H200 run their own SASS, A100 and the other Ampere/Ada parts sm_80's.
    use flashcomm::KernelCode;
    assert_eq!(KERNELS.code_for((9, 0)), KernelCode::Sass { arch: (9, 0) });
    assert_eq!(KERNELS.code_for((8, 9)), KernelCode::Sass { arch: (8, 0) });
    assert_eq!(KERNELS.code_for((10, 0)), KernelCode::Ptx);
}
