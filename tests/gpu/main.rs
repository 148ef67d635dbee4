//! GPU test suite (libtest-mimic harness).
//!
//! Without enough GPUs each test is listed as *ignored* with its need
//! ("needs 2+ GPUs"), so a CPU-only `cargo test` shows them in the summary
//! and never counts them as passed. `REQUIRE_GPU=N` (N >= 1) turns a machine
//! with fewer than N GPUs into a failure instead.
//!
//! Random cases print their seed; `FLASHCOMM_SEED=<seed>` replays a run and
//! `FLASHCOMM_GPU_CASES=<n>` sets the number of random all-reduce cases.
mod allreduce;
mod codec;
mod common;
mod failure;
mod process;
mod reliability;
mod streams;

use libtest_mimic::{Arguments, Failed, Trial};

type TestFn = fn() -> Result<(), Failed>;

fn main() {
    // A rank process of the `process::` tests (this binary started again).
    if let Ok(spec) = std::env::var(process::RANK_ENV) {
        std::process::exit(process::child(&spec));
    }
    let args = Arguments::from_args();
    let gpus = flashcomm::gpu_count();
    let required: usize = std::env::var("REQUIRE_GPU").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let tests: &[(&str, usize, TestFn)] = &[
        ("codec::round_trip_bit_exact", 1, codec::round_trip_bit_exact),
        ("allreduce::random_cases_bit_exact", 2, allreduce::random_cases_bit_exact),
        ("allreduce::shared_device_ranks_bit_exact", 1, allreduce::shared_device_ranks_bit_exact),
        ("allreduce::consecutive_calls_and_pieces", 2, allreduce::consecutive_calls_and_pieces),
        ("allreduce::unquantized_is_rank_ordered_sum", 2, allreduce::unquantized_is_rank_ordered_sum),
        ("allreduce::per_rank_calls_from_threads", 2, allreduce::per_rank_calls_from_threads),
        ("allreduce::raw_entry_point", 2, allreduce::raw_entry_point),
        ("allreduce::graph_replay_bit_exact", 1, allreduce::graph_replay_bit_exact),
        ("allreduce::back_to_back_calls_no_host_sync", 1, allreduce::back_to_back_calls_no_host_sync),
        ("allreduce::real_activations_bit_exact", 1, allreduce::real_activations_bit_exact),
        ("allreduce::nccl_baseline_agrees", 2, allreduce::nccl_baseline_agrees),
        ("allreduce::auto_nccl_fallback", 2, allreduce::auto_nccl_fallback),
        ("streams::engine_streams_ordered", 2, streams::engine_streams_ordered),
        ("streams::from_engine_streams", 2, streams::from_engine_streams),
        ("streams::sass_and_ptx_agree", 1, streams::sass_and_ptx_agree),
        ("streams::shared_gpu_ranks_share_a_buffer_stream", 1, streams::shared_gpu_ranks_share_a_buffer_stream),
        ("streams::nccl_on_engine_streams", 2, streams::nccl_on_engine_streams),
        ("failure::watchdog_missing_rank", 2, failure::watchdog_missing_rank),
        ("failure::watchdog_missing_rank_shared_device", 1, failure::watchdog_missing_rank_shared_device),
        ("failure::mismatched_lengths_detected", 2, failure::mismatched_lengths_detected),
        ("failure::mismatched_spikes_detected", 2, failure::mismatched_spikes_detected),
        ("failure::bad_inputs_fail_before_launch", 2, failure::bad_inputs_fail_before_launch),
        ("reliability::late_rank_gets_an_error", 1, reliability::late_rank_gets_an_error),
        ("reliability::concurrent_all_rank_calls", 1, reliability::concurrent_all_rank_calls),
        ("reliability::split_calls_do_not_pair", 1, reliability::split_calls_do_not_pair),
        ("reliability::recover_is_ordered", 1, reliability::recover_is_ordered),
        ("reliability::busy_gpu_correct_or_error", 1, reliability::busy_gpu_correct_or_error),
        ("reliability::mismatch_without_watchdog_ends", 1, reliability::mismatch_without_watchdog_ends),
        ("reliability::recover_keeps_unreported_errors", 1, reliability::recover_keeps_unreported_errors),
        ("process::random_cases_bit_exact", 2, process::random_cases_bit_exact),
        ("process::one_visible_gpu_per_process_bit_exact", 2, process::one_visible_gpu_per_process_bit_exact),
        ("process::shared_gpu_processes_bit_exact", 1, process::shared_gpu_processes_bit_exact),
        ("process::killed_rank_is_an_error", 1, process::killed_rank_is_an_error),
        ("process::killed_root_is_an_error_everywhere", 1, process::killed_root_is_an_error_everywhere),
        ("process::recover_across_processes", 1, process::recover_across_processes),
        ("process::never_calling_rank_times_out", 1, process::never_calling_rank_times_out),
        // Last: on code without the fix it reads freed memory, which can
        // leave the CUDA context unusable for any test after it.
        ("reliability::graph_outlives_communicator", 1, reliability::graph_outlives_communicator),
    ];
    let mut trials: Vec<Trial> = tests
        .iter()
        .map(|&(name, need, f)| {
            let trial = Trial::test(name, move || f());
            if name.contains("nccl") && !cfg!(feature = "nccl") {
                trial.with_ignored_flag(true).with_kind("needs feature nccl")
            } else if gpus < need {
                trial.with_ignored_flag(true).with_kind(format!("needs {need}+ GPUs"))
            } else {
                trial
            }
        })
        .collect();
    if required > 0 {
        trials.push(Trial::test("gpu_is_available", move || {
            if gpus >= required {
                Ok(())
            } else {
                Err(format!("REQUIRE_GPU={required} but {gpus} GPU(s) are visible").into())
            }
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
